"""What both HTTP services (the query service, the command gateway) do at their edge: optional
bearer tokens compared in constant time, and JSON request bodies read no further than a
bound. Plain ASGI and Starlette; no project code."""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Final

import orjson
from starlette.requests import ClientDisconnect, Request

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]],
                   Awaitable[None]]
# A request's head (request line and headers) may take this much, no more: 431 past it.
MAX_HEAD_BYTES: Final = 32 * 1024
# A head not complete this long after the connection opened is closed (slow clients).
HEAD_READ_TIMEOUT_S: Final = 10.0
# A body not complete this long after its head is answered 408 (slow or stalled clients).
BODY_READ_TIMEOUT_S: Final = 10.0
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


async def read_json_object(request: Request, limit: int,
                           timeout_s: float = BODY_READ_TIMEOUT_S) -> dict[str, Any]:
    """The request body as a JSON object, read no further than ``limit`` bytes: 413 past it,
    408 when it does not arrive within ``timeout_s``, 400 for a body the client broke off or
    framed wrongly (a bad chunk) and for anything that is not one JSON object."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise BadBody(413, f"the body may hold at most {limit} bytes")
    try:
        body = await asyncio.wait_for(_read(request, limit), timeout_s)
    except TimeoutError:
        raise BadBody(408, f"the body did not arrive within {timeout_s:g} s") from None
    except ClientDisconnect:
        raise BadBody(400, "the body was cut short or badly framed") from None
    try:
        value = orjson.loads(body or b"{}")
    except orjson.JSONDecodeError as exc:
        raise BadBody(400, f"the body is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise BadBody(400, "the body must be a JSON object")
    return value


async def _read(request: Request, limit: int) -> bytes:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise BadBody(413, f"the body may hold at most {limit} bytes")
    return bytes(body)
