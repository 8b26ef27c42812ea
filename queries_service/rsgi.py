"""The query service on granian's RSGI interface: the fast path answered straight from the
kept views, everything else handed to the ASGI application through a small bridge.

Measured (bench/README.md, "Speed, third round"): granian spends less of a core per request on
RSGI than on ASGI (33 against 42 µs for a fixed answer), and a repeated poll is most of what
the service answers. A well-formed long-poll of one request is held and answered here too,
by the endpoints' own wait. The bridge gives the ASGI app what it needs here: the whole body in one
message (the endpoints that read one check its declared length first, and take none without
it), a disconnect once the client is gone (a GET whose client hangs up is cancelled: a
long-poll is not held for nobody), one ``response_bytes`` for a whole answer and a
stream for an answer sent in parts. The ASGI lifespan runs in ``__rsgi_init__`` and
``__rsgi_del__``, on the loop the server then serves on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import Awaitable, MutableMapping
from typing import TYPE_CHECKING, Any, Final, TypeVar

from queries_service.cache import CacheUnavailable
from queries_service.hot_views import FastPath
from queries_service.parameters import MIN_VERSION, WAIT, BadParameter
from queries_service.responses import failed, not_found, refused, unreachable
from shared import keys
from shared.asgi import ASGIApp, Message, bearer_allowed, protected
from shared.ids import is_valid_id

if TYPE_CHECKING:
    from starlette.responses import Response

    from queries_service.endpoints import QueryApp

log = logging.getLogger("hostfactory.queries")
T = TypeVar("T")
_POLL_FLAGS: Final = {"true": True, "false": False}


def long_poll(path: str, query: str, max_wait_s: int) -> tuple[str, str, int, int] | None:
    """The key, request id, ``min_version`` and ``wait`` of a well-formed long-poll of one
    request (``GET /requests/{id}?min_version=N&wait=S``, ``include_machines`` optional), or
    None: whatever else (a repeated or unknown parameter, an encoded or out-of-range value)
    is left to the application, which answers or refuses it by the same rules."""
    if not path.startswith("/requests/"):
        return None
    ident = path[len("/requests/"):]
    if "/" in ident or not is_valid_id(ident):
        return None
    given: dict[str, str] = {}
    for part in query.split("&"):
        name, eq, value = part.partition("=")
        if not eq or name in given or not value:
            return None
        given[name] = value
    flag = _POLL_FLAGS.get(given.pop("include_machines", "true"))
    try:
        min_version = MIN_VERSION.parse(given.pop("min_version", None), max_wait_s)
        wait = WAIT.parse(given.pop("wait", None), max_wait_s)
    except BadParameter:
        return None
    if given or flag is None or not min_version or not wait:
        return None
    key = keys.request_key(ident) if flag else keys.request_summary_key(ident)
    return key, ident, min_version, wait


class QueryService:
    """The query service: an ASGI app (``__call__``: tests, uvicorn) and an RSGI app
    (``__rsgi__``: granian), the same answers either way."""

    def __init__(self, fast: FastPath, tokens: tuple[str, ...],
                 holder: dict[str, QueryApp], max_wait_s: int) -> None:
        # The ASGI stack: bearer tokens, the fast path, Starlette. What crosses the bridge has
        # missed the fast path already: bearer tokens and Starlette only.
        self.app = protected(fast, tokens)
        self.bridged = protected(fast.app, tokens)
        self.fast = fast
        self.holder = holder  # the endpoints, once the lifespan has made them
        self.max_wait_s = max_wait_s
        self.tokens = [t.encode() for t in tokens]
        self._lifespan: _Lifespan | None = None

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)

    def __rsgi_init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._lifespan = _Lifespan(self.bridged)
        try:
            loop.run_until_complete(self._lifespan.startup())
        except Exception:
            log.exception("the query service did not start", extra={"event": "startup_failed"})
            sys.exit(1)

    def __rsgi_del__(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._lifespan is not None:
            loop.run_until_complete(self._lifespan.shutdown())

    async def __rsgi__(self, scope: Any, protocol: Any) -> None:
        if scope.proto != "http":
            return
        if scope.method == "GET":
            started = time.perf_counter()
            hit = self.fast.lookup(scope.path, scope.query_string)
            if hit is not None and self._authorized(scope):
                status, doc, _, headers = self.fast.answer(
                    *hit, scope.headers.get("if-none-match"))
                self._send(protocol, hit[0], status, headers, doc, started)
                return
            poll = long_poll(scope.path, scope.query_string, self.max_wait_s)
            if poll is not None and "app" in self.holder and self._authorized(scope):
                await self._long_poll(scope, protocol, *poll)
                return
        await _Exchange(scope, protocol, self._lifespan).run(self.bridged)

    async def _long_poll(self, scope: Any, protocol: Any, key: str, ident: str,
                         min_version: int, wait_s: int) -> None:
        """A long-poll answered here, as ``QueryApp.get_request`` answers it: held until the
        view reaches ``min_version`` or the wait runs out, let go at once if its client hangs
        up. Starlette and the bridge were over a quarter of the service's CPU on polls woken
        by projections (py-spy, bench.lag at 150 commands/s)."""
        started = time.perf_counter()
        held = await _unless_gone(protocol, self.holder["app"].wait_for(key, min_version, wait_s))
        if held is None:
            return
        status, body, headers = self._poll_answer(scope, held, key, ident)
        self._send(protocol, "get_request", status, headers, body, started)

    def _send(self, protocol: Any, route: str, status: int, headers: list[tuple[str, str]],
              body: bytes, started: float) -> None:
        """Answer in one ``response_bytes``, and count it as the app counts its answers."""
        with contextlib.suppress(RuntimeError):  # the client went away
            protocol.response_bytes(status, headers, body)
        self.fast.count(route, status, time.perf_counter() - started)

    def _authorized(self, scope: Any) -> bool:
        """Whether the fast path may answer (else the ASGI stack answers, 401 included)."""
        return not self.tokens or bearer_allowed(
            self.tokens, scope.headers.get("authorization", "").encode("latin-1"))

    def _poll_answer(self, scope: Any, held: asyncio.Future[bytes | None], key: str,
                     ident: str) -> tuple[int, bytes, list[tuple[str, str]]]:
        """What ``_route`` and ``document`` make of a poll's outcome, and log of it."""
        correlation_id = scope.headers.get("x-correlation-id", "")
        try:
            doc = held.result()
        except CacheUnavailable as exc:
            refused(503, "get_request", scope.path, correlation_id)
            return _parts(unreachable("get_request", exc))
        except Exception as exc:
            return _parts(failed(exc, scope.path, correlation_id))
        if doc is None:
            return _parts(not_found("request", ident))
        status, body, _, headers = self.fast.answer(
            "get_request", key, doc, scope.headers.get("if-none-match"))
        return status, body, headers


async def _unless_gone(protocol: Any, work: Awaitable[T]) -> asyncio.Future[T] | None:
    """``work`` run to its end, or cancelled the moment the client hangs up (then None)."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(protocol.client_disconnect())
    try:
        await asyncio.wait([task, gone], return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if task.done():
        return task
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return None


def _parts(response: Response) -> tuple[int, bytes, list[tuple[str, str]]]:
    """A Starlette response as RSGI's ``response_bytes`` takes it."""
    return response.status_code, bytes(response.body), [
        (k.decode("latin-1"), v.decode("latin-1")) for k, v in response.raw_headers]


class _Exchange:
    """One RSGI request served by an ASGI app."""

    def __init__(self, scope: Any, protocol: Any, lifespan: _Lifespan | None) -> None:
        self.protocol = protocol
        self.method = scope.method
        host, _, port = scope.client.rpartition(":")
        server_host, _, server_port = scope.server.rpartition(":")
        self.scope: dict[str, Any] = {
            "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": scope.http_version, "method": scope.method,
            "scheme": scope.scheme, "path": scope.path,
            "raw_path": scope.path.encode("utf-8"),
            "query_string": scope.query_string.encode("latin-1"), "root_path": "",
            "headers": [(k.encode("latin-1"), v.encode("latin-1"))
                        for k, v in scope.headers.items()],
            "client": (host.strip("[]"), int(port or 0)),
            "server": (server_host.strip("[]"), int(server_port or 0)),
            "state": dict(lifespan.state) if lifespan else {}}
        self.body_read = False
        self.start: Message | None = None
        self.stream: Any = None

    async def run(self, app: ASGIApp) -> None:
        try:
            if self.method != "GET":
                await app(self.scope, self.receive, self.send)
                return
            # A GET may be a long-poll: when its client hangs up, the poll is let go at once
            # rather than held (a task and a waiter) until its wait runs out.
            served = await _unless_gone(self.protocol, app(self.scope, self.receive, self.send))
            if served is not None:
                served.result()
        except Exception:
            # Starlette answered 500 and logged it (the app's handler) before raising again.
            if self.start is None:
                raise

    async def receive(self) -> Message:
        if not self.body_read:
            self.body_read = True
            try:
                body = await self.protocol()
            except RuntimeError:  # cut short or badly framed: granian's ProtocolError/Closed
                return {"type": "http.disconnect"}
            return {"type": "http.request", "body": body, "more_body": False}
        await self.protocol.client_disconnect()
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.start = message
            return
        if message["type"] != "http.response.body" or self.start is None:
            return
        body = b"" if self.method == "HEAD" else message.get("body", b"")
        more = message.get("more_body", False)
        try:
            if self.stream is None and not more:
                self.protocol.response_bytes(self.start["status"], self._headers(), body)
                return
            if self.stream is None:
                self.stream = self.protocol.response_stream(self.start["status"], self._headers())
            if body:
                await self.stream.send_bytes(body)
        except RuntimeError:  # the client went away
            return

    def _headers(self) -> list[tuple[str, str]]:
        assert self.start is not None
        return [(k.decode("latin-1"), v.decode("latin-1")) for k, v in self.start["headers"]]


class _Lifespan:
    """Runs an ASGI app's lifespan (startup, then shutdown), as an ASGI server does."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.state: dict[str, Any] = {}
        self.task: asyncio.Task[None] | None = None

    async def startup(self) -> None:
        self.events: asyncio.Queue[Message] = asyncio.Queue()
        self.answers: asyncio.Queue[Message] = asyncio.Queue()
        self.task = asyncio.ensure_future(self.app(
            {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.3"},
             "state": self.state}, self.events.get, self.answers.put))
        await self._expect("lifespan.startup")

    async def shutdown(self) -> None:
        if self.task is not None and not self.task.done():
            await self._expect("lifespan.shutdown")

    async def _expect(self, event: str) -> None:
        assert self.task is not None
        await self.events.put({"type": event})
        answer = asyncio.ensure_future(self.answers.get())
        await asyncio.wait([answer, self.task], return_when=asyncio.FIRST_COMPLETED)
        if not answer.done():
            answer.cancel()
            self.task.result()  # raises what the app raised
            raise RuntimeError(f"the app ended its lifespan without answering {event}")
        if answer.result()["type"] != f"{event}.complete":
            raise RuntimeError(answer.result().get("message") or f"{event} failed")
