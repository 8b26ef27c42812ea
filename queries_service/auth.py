"""Optional bearer tokens (``QUERY_API_TOKENS``), compared in constant time. Liveness and
readiness stay open for orchestrators."""

from __future__ import annotations

import hmac
from typing import Final

from starlette.types import ASGIApp, Receive, Scope, Send

from queries_service.responses import error


class BearerTokens:
    OPEN_PATHS: Final = frozenset({"/healthz", "/readyz"})

    def __init__(self, app: ASGIApp, tokens: tuple[str, ...]) -> None:
        self.app = app
        self.tokens = [t.encode() for t in tokens]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (not self.tokens or scope["type"] != "http" or scope["path"] in self.OPEN_PATHS
                or self._allowed(scope)):
            await self.app(scope, receive, send)
            return
        response = error(401, "unauthorized", "send Authorization: Bearer <token>")
        response.headers["www-authenticate"] = "Bearer"
        await response(scope, receive, send)

    def _allowed(self, scope: Scope) -> bool:
        header = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, token = header.partition(b" ")
        if scheme.lower() != b"bearer":
            return False
        # Compare against every token, always: no early exit that timing could reveal.
        matches = [hmac.compare_digest(token.strip(), t) for t in self.tokens]
        return any(matches)
