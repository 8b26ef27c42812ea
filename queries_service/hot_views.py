"""Hot views kept in the process, and the fast path that serves them.

Pollers ask for the same few views again and again. A view read from Redis is kept here until
the projector announces a newer version of it (the notifier's subscription), so a repeated
poll costs no Redis round trip and no framework routing. The local copy is used only while
every subscription is live: when one drops, everything kept is forgotten, because an
announcement may have been missed. A read that raced an announcement is not kept (generation
check). ``min_version`` and ``If-None-Match`` are honoured on the fast path too.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Final

from starlette.types import ASGIApp, Receive, Scope, Send

from queries_service.responses import etag, not_modified
from shared import keys

_JSON: Final = ("content-type", "application/json")
# Listing pages (``GET /requests?…``) are kept under this prefix and the raw query string.
# Any request's view changing may change any page, so one announcement drops them all.
PAGE_PREFIX: Final = "requests?"
_REQUEST_VIEWS: Final = (keys.request_key(""), keys.request_summary_key(""))
MAX_PAGES: Final = 2_000
_NO_CACHE: Final = ("cache-control", "no-cache")


class LocalViews:
    """Bounded by entries and by bytes (keys included): a poller sending endless distinct
    query strings costs this process at most ``max_bytes``."""

    def __init__(self, max_entries: int = 20_000, max_bytes: int = 64 * 2**20) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.size = 0
        self.docs: OrderedDict[str, bytes] = OrderedDict()
        self.generation: dict[str, int] = {}
        self.epoch = 0
        self.live_sources = 0
        self.sources = 0
        self.hits = 0
        # Listing pages: their own small store, dropped whole when any request changes.
        self.pages: dict[str, bytes] = {}
        self.pages_size = 0

    @property
    def enabled(self) -> bool:
        return self.sources > 0 and self.live_sources == self.sources

    def get(self, key: str) -> bytes | None:
        if not self.enabled:
            return None
        doc = (self.pages if key.startswith(PAGE_PREFIX) else self.docs).get(key)
        if doc is not None:
            self.hits += 1
        return doc

    def stamp(self, key: str) -> tuple[int, int]:
        """The key's generation, and the epoch of the generation table (it is emptied when
        it grows too large: a stamp taken before that never matches one after)."""
        return self.epoch, self.generation.get(key, 0)

    def keep(self, key: str, doc: bytes, stamp: tuple[int, int],
             stamp_key: str | None = None) -> None:
        """Keep ``doc`` unless an announcement for ``stamp_key`` (default ``key``) arrived
        since ``stamp`` was taken."""
        if not self.enabled or self.stamp(stamp_key or key) != stamp:
            return
        if key.startswith(PAGE_PREFIX):
            self._keep_page(key, doc)
            return
        self._drop(key)
        self.docs[key] = doc
        self.size += len(key) + len(doc)
        while self.docs and (len(self.docs) > self.max_entries or self.size > self.max_bytes):
            self._drop(next(iter(self.docs)))

    def _keep_page(self, key: str, doc: bytes) -> None:
        if len(self.pages) >= MAX_PAGES or self.pages_size + len(doc) > self.max_bytes // 4:
            self._drop_pages()
        self.pages[key] = doc
        self.pages_size += len(key) + len(doc)

    def _drop_pages(self) -> None:
        if self.pages:
            self.pages = {}
            self.pages_size = 0

    def _drop(self, key: str) -> None:
        doc = self.docs.pop(key, None)
        if doc is not None:
            self.size -= len(key) + len(doc)

    def _clear(self) -> None:
        self.docs.clear()
        self.size = 0
        self._drop_pages()

    def invalidate(self, key: str) -> None:
        self.generation[key] = self.generation.get(key, 0) + 1
        self._drop(key)
        if key.startswith(_REQUEST_VIEWS):
            self.generation[PAGE_PREFIX] = self.generation.get(PAGE_PREFIX, 0) + 1
            self._drop_pages()
        if key == keys.TEMPLATES_KEY:
            for cached in [k for k in self.docs if k.startswith("templates?")]:
                self._drop(cached)
        if len(self.generation) > 4 * self.max_entries:
            self.generation.clear()
            self.epoch += 1
            self._clear()

    def source_up(self) -> None:
        self.live_sources += 1

    def source_down(self) -> None:
        self.live_sources -= 1
        self._clear()


_ROUTES: Final = (
    ("/requests/", "get_request", keys.request_key),
    ("/machines/", "get_machine", keys.machine_key),
    ("/commands/", "get_command", keys.command_key),
)


def fast_key(path: str, query: str) -> tuple[str, str] | None:
    """The local key a GET can be answered from without the framework, if any."""
    if path == "/templates":
        return "list_templates", "templates?" + query
    if path == "/requests":
        return "list_requests", PAGE_PREFIX + query
    if query not in ("", "include_machines=true", "include_machines=false"):
        return None
    for prefix, route, key_of in _ROUTES:
        if path.startswith(prefix):
            ident = path[len(prefix):]
            if not ident or "/" in ident:
                return None
            if query == "include_machines=false":
                if route != "get_request":
                    return None
                return route, keys.request_summary_key(ident)
            if query and route != "get_request":
                return None
            return route, key_of(ident)
    return None


# A kept document's answer head: the document it was made for, its headers (as ASGI wants
# them, and as granian's RSGI wants them) and its ETag.
_Head = tuple[bytes, list[tuple[bytes, bytes]], list[tuple[str, str]], str | None]


class FastPath:
    """Answers repeated GETs from ``LocalViews``; everything else goes to the app. Served on
    ASGI (``__call__``) and, by ``queries_service.rsgi``, on granian's RSGI (``lookup`` and
    ``answer``)."""

    def __init__(self, app: ASGIApp, local: LocalViews,
                 count: Callable[[str, int, float], None]) -> None:
        self.app = app
        self.local = local
        self.count = count
        # Made once per document: valid while the document kept is this very object.
        self._heads: dict[str, _Head] = {}

    def lookup(self, path: str, query: str) -> tuple[str, str, bytes] | None:
        """The route, key and kept document that answer a GET of ``path?query``, if any."""
        if not self.local.enabled:
            return None
        found = fast_key(path, query)
        if found is None:
            return None
        doc = self.local.get(found[1])
        return None if doc is None else (found[0], found[1], doc)

    def answer(self, route: str, key: str, doc: bytes, if_none_match: str | None
               ) -> tuple[int, bytes, list[tuple[bytes, bytes]], list[tuple[str, str]]]:
        """The status, body and headers (ASGI's, RSGI's) of the answer: 304, without a body,
        when the poller holds this version."""
        _, raw, named, tag = self._head(route, key, doc)
        if tag is not None and if_none_match is not None and not_modified(if_none_match, tag):
            return (304, b"", [*raw[:-1], (b"content-length", b"0")],
                    [*named[:-1], ("content-length", "0")])
        return 200, doc, raw, named

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET" and self.local.enabled:
            started = time.perf_counter()
            hit = self.lookup(scope["path"], scope["query_string"].decode("latin-1"))
            if hit is not None:
                asked = next((v for k, v in scope["headers"] if k == b"if-none-match"), None)
                status, doc, headers, _ = self.answer(
                    *hit, None if asked is None else asked.decode("latin-1"))
                await send({"type": "http.response.start", "status": status, "headers": headers})
                await send({"type": "http.response.body", "body": doc})
                self.count(hit[0], status, time.perf_counter() - started)
                return
        await self.app(scope, receive, send)

    def _head(self, route: str, key: str, doc: bytes) -> _Head:
        made = self._heads.get(key)
        if made is not None and made[0] is doc:
            return made
        named = [_JSON, _NO_CACHE]
        tag = None
        if route not in ("list_templates", "list_requests"):
            tag = etag(key, doc)
            named.append(("etag", tag))
        named.append(("content-length", str(len(doc))))
        head = (doc, [(k.encode(), v.encode()) for k, v in named], named, tag)
        if len(self._heads) >= 2 * self.local.max_entries:
            self._heads.clear()
        self._heads[key] = head
        return head
