"""The query service on granian's RSGI interface: the fast path answered straight from the
kept views, everything else handed to the ASGI application through a small bridge.

Measured (bench/README.md, "Speed, third round"): granian spends less of a core per request on
RSGI than on ASGI (33 against 42 µs for a fixed answer), and a repeated poll is most of what
the service answers. The bridge gives the ASGI app what it needs here: the whole body in one
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
from collections.abc import MutableMapping
from typing import Any

from queries_service.hot_views import FastPath
from shared.asgi import ASGIApp, Message, bearer_allowed, protected

log = logging.getLogger("hostfactory.queries")


class QueryService:
    """The query service: an ASGI app (``__call__``: tests, uvicorn) and an RSGI app
    (``__rsgi__``: granian), the same answers either way."""

    def __init__(self, fast: FastPath, tokens: tuple[str, ...]) -> None:
        # The ASGI stack: bearer tokens, the fast path, Starlette. What crosses the bridge has
        # missed the fast path already: bearer tokens and Starlette only.
        self.app = protected(fast, tokens)
        self.bridged = protected(fast.app, tokens)
        self.fast = fast
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
                with contextlib.suppress(RuntimeError):  # the client went away
                    protocol.response_bytes(status, headers, doc)
                self.fast.count(hit[0], status, time.perf_counter() - started)
                return
        await _Exchange(scope, protocol, self._lifespan).run(self.bridged)

    def _authorized(self, scope: Any) -> bool:
        """Whether the fast path may answer (else the ASGI stack answers, 401 included)."""
        return not self.tokens or bearer_allowed(
            self.tokens, scope.headers.get("authorization", "").encode("latin-1"))


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
            served = asyncio.ensure_future(app(self.scope, self.receive, self.send))
            gone = asyncio.ensure_future(self.protocol.client_disconnect())
            try:
                await asyncio.wait([served, gone], return_when=asyncio.FIRST_COMPLETED)
            finally:
                gone.cancel()
            if not served.done():
                served.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await served
                return
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
