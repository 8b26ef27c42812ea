"""What both HTTP services (the query service, the command gateway) do at their edge: optional
bearer tokens compared in constant time, and JSON request bodies read no further than a
bound. Plain ASGI and Starlette; no project code."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Final

import orjson
from starlette.requests import Request

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]],
                   Awaitable[None]]
_UNAUTHORIZED: Final = orjson.dumps({"error": "unauthorized",
                                     "detail": "send Authorization: Bearer <token>"})


class BearerTokens:
    """Refuses (401, JSON) every HTTP request without one of ``tokens`` as its bearer token,
    except on ``open_paths`` (liveness and readiness stay open for orchestrators). No tokens:
    everything is open."""

    def __init__(self, app: ASGIApp, tokens: tuple[str, ...],
                 open_paths: frozenset[str] = frozenset({"/healthz", "/readyz"})) -> None:
        self.app = app
        self.tokens = [t.encode() for t in tokens]
        self.open_paths = open_paths

    async def __call__(self, scope: Scope, receive: Callable[[], Awaitable[Message]],
                       send: Callable[[Message], Awaitable[None]]) -> None:
        if (not self.tokens or scope["type"] != "http" or scope["path"] in self.open_paths
                or self._allowed(scope)):
            await self.app(scope, receive, send)
            return
        await send({"type": "http.response.start", "status": 401, "headers": [
            (b"content-type", b"application/json"), (b"www-authenticate", b"Bearer"),
            (b"content-length", str(len(_UNAUTHORIZED)).encode())]})
        await send({"type": "http.response.body", "body": _UNAUTHORIZED})

    def _allowed(self, scope: Scope) -> bool:
        header = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, token = header.partition(b" ")
        if scheme.lower() != b"bearer":
            return False
        # Compare against every token, always: no early exit that timing could reveal.
        matches = [hmac.compare_digest(token.strip(), t) for t in self.tokens]
        return any(matches)


class BadBody(Exception):
    def __init__(self, status: int, problem: str) -> None:
        super().__init__(problem)
        self.status = status
        self.problem = problem


async def read_json_object(request: Request, limit: int) -> dict[str, Any]:
    """The request body as a JSON object, read no further than ``limit`` bytes: 413 past it,
    400 for anything that is not one JSON object."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise BadBody(413, f"the body may hold at most {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise BadBody(413, f"the body may hold at most {limit} bytes")
    try:
        value = orjson.loads(bytes(body) or b"{}")
    except orjson.JSONDecodeError as exc:
        raise BadBody(400, f"the body is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise BadBody(400, "the body must be a JSON object")
    return value
