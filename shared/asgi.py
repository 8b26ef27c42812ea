"""What both HTTP services (the query service, the command gateway) do at their edge: optional
bearer tokens compared in constant time, and JSON request bodies read no further than a
bound. Plain ASGI and Starlette; no project code."""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Final

import orjson
from starlette.requests import Request

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
        return bearer_allowed(self.tokens, dict(scope["headers"]).get(b"authorization", b""))


def bearer_allowed(tokens: list[bytes], authorization: bytes) -> bool:
    """Whether an ``Authorization`` header carries one of ``tokens`` as its bearer token."""
    scheme, _, token = authorization.partition(b" ")
    if scheme.lower() != b"bearer":
        return False
    # Compare against every token, always: no early exit that timing could reveal.
    matches = [hmac.compare_digest(token.strip(), t) for t in tokens]
    return any(matches)


def protected(app: ASGIApp, tokens: tuple[str, ...],
              open_paths: frozenset[str] = frozenset({"/healthz", "/readyz"})) -> ASGIApp:
    """``app`` behind ``BearerTokens``; ``app`` itself when no tokens are set (one call less
    on every request)."""
    return BearerTokens(app, tokens, open_paths) if tokens else app


class BadBody(Exception):
    def __init__(self, status: int, problem: str) -> None:
        super().__init__(problem)
        self.status = status
        self.problem = problem


BODY_LENGTH_REQUIRED: Final = ("send the body with a Content-Length header (chunked bodies "
                                "are not accepted)")


async def read_json_object(request: Request, limit: int,
                           timeout_s: float = BODY_READ_TIMEOUT_S) -> dict[str, Any]:
    """``read_json`` of a Starlette request; 411 for a body without a declared length (on
    granian's RSGI interface a chunked body is read whole and unbounded, and a malformed or
    cut one can end quietly: what is not declared is not read)."""
    declared = request.headers.get("content-length")
    if declared is None:
        raise BadBody(411, BODY_LENGTH_REQUIRED)
    return await read_json(lambda: asgi_body(request.receive, limit), declared, limit, timeout_s)


async def read_json(read: Callable[[], Awaitable[bytes]], declared: str | None, limit: int,
                    timeout_s: float = BODY_READ_TIMEOUT_S) -> dict[str, Any]:
    """The request body (``read``, which stops past ``limit`` bytes) as a JSON object: 413
    past the limit (``declared``: the Content-Length header, if any, checked first), 408 when
    it does not arrive within ``timeout_s``, 400 for a body the client broke off or framed
    wrongly (a bad chunk) and for anything that is not one JSON object."""
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise BadBody(413, f"the body may hold at most {limit} bytes")
    # One timer that cancels the read: asyncio.wait_for made a task per read, asyncio.timeout
    # is twice this timer's cost; both were measured on every POST of the gateway.
    task = asyncio.current_task()
    assert task is not None
    expired: list[bool] = []
    timer = asyncio.get_running_loop().call_later(timeout_s, _expire, task, expired)
    try:
        body = await read()
    except asyncio.CancelledError:
        if not expired or task.uncancel() > 0:
            raise  # cancelled by someone else (the server closing the connection)
        raise BadBody(408, f"the body did not arrive within {timeout_s:g} s") from None
    finally:
        timer.cancel()
    try:
        value = orjson.loads(body or b"{}")
    except orjson.JSONDecodeError as exc:
        raise BadBody(400, f"the body is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise BadBody(400, "the body must be a JSON object")
    return value


def _expire(task: asyncio.Task[Any], expired: list[bool]) -> None:
    expired.append(True)
    task.cancel()


CUT_SHORT: Final = "the body was cut short or badly framed"


async def asgi_body(receive: Callable[[], Awaitable[Message]], limit: int) -> bytes:
    """An ASGI request's body, no further than ``limit`` bytes."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":  # http.disconnect
            raise BadBody(400, CUT_SHORT)
        chunk = message.get("body", b"")
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            raise BadBody(413, f"the body may hold at most {limit} bytes")
        if not message.get("more_body", False):
            return b"".join(chunks)


async def rsgi_body(protocol: Any) -> bytes:
    """An RSGI (granian) request's body, whose declared length the caller checked against
    its limit: read whole, in one call, which fails for a body cut short or badly framed
    (granian's chunk iterator ends quietly instead, so a body of no declared length is refused
    before this: see the gateway's 411)."""
    try:
        body: bytes = await protocol()
        return body
    except RuntimeError:  # granian's RSGIProtocolClosed / RSGIProtocolError
        raise BadBody(400, CUT_SHORT) from None
