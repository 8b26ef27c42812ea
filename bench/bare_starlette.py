"""The query-side baseline: a Starlette hello world returning a fixed JSON body the size of a
request view (set BODY_BYTES), served the way a Python team would deploy it."""

from __future__ import annotations

import os

from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

BODY = (b'{"pad":"' + b"x" * max(int(os.environ.get("BODY_BYTES", "400")) - 10, 0) + b'"}')


async def hello(request: object) -> Response:
    return Response(BODY, media_type="application/json")


app = Starlette(routes=[Route("/hello", hello)])
