"""The HTTP endpoints. Views are served as the projector stored them: no store, no broker,
no re-serialisation of a document on the way out."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from queries_service import cursors, openapi
from queries_service.cache import CacheUnavailable, ReadCache, doc_version
from queries_service.hostfactory import HostFactoryAnswers
from queries_service.hot_views import PAGE_PREFIX, LocalViews
from queries_service.metrics import CONTENT_TYPE, Metrics
from queries_service.notifications import ViewNotifier
from queries_service.parameters import QUERY_PARAMS, Parameters
from queries_service.responses import JSON, UNREACHABLE, document, error
from shared import keys
from shared.ids import is_valid_id
from shared.settings import Settings


def _ident(request: Request, name: str) -> str | None:
    value: str = request.path_params[name]
    return value if is_valid_id(value) else None


class QueryApp:
    """The endpoints, over one read cache."""

    def __init__(self, cache: ReadCache, settings: Settings, local: LocalViews,
                 metrics: Metrics) -> None:
        self.cache = cache
        self.local = local
        self.params = Parameters(settings.query_max_wait_s)
        self.notifier = ViewNotifier(cache, local)
        self.metrics = metrics
        metrics.follow(lambda: (self.notifier.waiting_count(), {
            "local_hits": self.local.hits, "long_polls_woken": self.notifier.woken,
            **{f"cache_{k}": v for k, v in self.cache.counters.items()}}))
        self._reading: dict[str, asyncio.Future[bytes | None]] = {}
        self._templates: tuple[int, list[dict[str, Any]]] = (-1, [])
        self.hostfactory = HostFactoryAnswers(cache, settings, self._load_templates)

    async def get_request(self, request: Request) -> Response:
        ident = _ident(request, "request_id")
        if ident is None:
            return error(404, "not_found", "no such request")
        p = self.params.parse(request, "get_request")
        key = (keys.request_key(ident) if p["include_machines"]
               else keys.request_summary_key(ident))
        if p["wait"] and p["min_version"]:
            doc = await self.wait_for(key, p["min_version"], p["wait"])
        else:
            doc = await self._read(key, p["min_version"])
        return document(request, key, doc, "request", ident)

    async def _read(self, key: str, min_version: int = 0) -> bytes | None:
        """A view from this process if it is known current, else from Redis (then kept).
        Concurrent reads of one key share one Redis round trip: a thousand long-polls woken
        by one projection cost one read, not a thousand. The read is a task of its own, so a
        poll let go (its client hung up) never takes the others' read with it."""
        doc = self.local.get(key)
        if doc is not None and (not min_version or doc_version(doc) >= min_version):
            return doc
        pending = self._reading.get(key)
        if pending is not None:
            doc = await asyncio.shield(pending)
            if doc is None or doc_version(doc) >= min_version:
                return doc
        reading = asyncio.ensure_future(self._fetch(key, min_version))
        self._reading[key] = reading
        reading.add_done_callback(functools.partial(self._read_done, key))
        return await asyncio.shield(reading)

    async def _fetch(self, key: str, min_version: int) -> bytes | None:
        stamp = self.local.stamp(key)
        doc = await self.cache.get(key, min_version)
        if doc is not None:
            self.local.keep(key, doc, stamp)
        return doc

    def _read_done(self, key: str, reading: asyncio.Future[bytes | None]) -> None:
        if self._reading.get(key) is reading:
            del self._reading[key]
        if not reading.cancelled():
            reading.exception()  # retrieved: a failed shared read is reported by each caller

    async def wait_for(self, key: str, min_version: int, wait_s: int) -> bytes | None:
        """Hold the poll until the view reaches ``min_version`` or ``wait_s`` pass."""
        deadline = asyncio.get_running_loop().time() + wait_s
        with self.notifier.waiting(key, min_version) as event:
            while True:
                # Cleared before the read, never after: an announcement that lands while the
                # read is in flight (or while it shares a read begun before the write) leaves
                # the event set, so the poll reads again instead of sleeping through it.
                event.clear()
                doc = await self._read(key, min_version)
                left = deadline - asyncio.get_running_loop().time()
                if (doc is not None and doc_version(doc) >= min_version) or left <= 0:
                    return doc
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), left)

    async def list_machines(self, request: Request) -> Response:
        """The machines of one request, in the order they were first reported."""
        ident = _ident(request, "request_id")
        doc = await self.cache.get(keys.request_key(ident)) if ident else None
        if doc is None:
            return error(404, "not_found", f"no request {ident!r}")
        p = self.params.parse(request, "list_machines")
        after = cursors.decode_machine(p["cursor"])
        machines = sorted(orjson.loads(doc)["machines"],
                          key=lambda m: (m["created_at"], m["machine_id"]))
        page = [m for m in machines if (m["created_at"], m["machine_id"]) > after][:p["limit"]]
        cursor = (cursors.encode_machine(page[-1]["created_at"], page[-1]["machine_id"])
                  if len(page) == p["limit"] else None)
        return Response(orjson.dumps({"machines": page, "next_cursor": cursor}), 200,
                        media_type=JSON)

    async def request_history(self, request: Request) -> Response:
        """Every command that touched the request or its machines, in the order applied."""
        ident = _ident(request, "request_id")
        entries = await self.cache.members(keys.history_key(ident)) if ident else []
        if not entries and (not ident or await self.cache.get(keys.request_key(ident)) is None):
            return error(404, "not_found", f"no request {ident!r}")
        body = (b'{"request_id":' + orjson.dumps(ident) + b',"entries":['
                + b",".join(entries) + b"]}")
        return Response(body, 200, media_type=JSON)

    async def get_machine(self, request: Request) -> Response:
        return await self._view(request, "get_machine", "machine", keys.machine_key)

    async def get_command(self, request: Request) -> Response:
        return await self._view(request, "get_command", "command", keys.command_key)

    async def _view(self, request: Request, operation: str, what: str,
                    key_of: Callable[[str], str]) -> Response:
        """A view named by the path's id, never older than ``min_version``."""
        ident = _ident(request, f"{what}_id")
        if ident is None:
            return error(404, "not_found", f"no such {what}")
        key = key_of(ident)
        doc = await self._read(key, self.params.parse(request, operation)["min_version"])
        return document(request, key, doc, what, ident)

    async def list_requests(self, request: Request) -> Response:
        """A page of requests, newest changes last; kept in the process until any request's
        view changes (the projector's announcement), so a repeated listing costs no Redis
        round trip."""
        p = self.params.parse(request, "list_requests")
        stamp = self.local.stamp(PAGE_PREFIX)
        index = (keys.requests_by_status_key(p["status"]) if p["status"]
                 else keys.REQUESTS_INDEX_KEY)
        rows = await self.cache.zrange_after(index, cursors.decode_score(p["cursor"]),
                                             p["limit"])
        key_of = keys.request_key if p["include_machines"] else keys.request_summary_key
        docs = [d for d in await self.cache.mget([key_of(m.decode()) for m, _ in rows])
                if d is not None]
        cursor = cursors.encode_score(int(rows[-1][1])) if len(rows) == p["limit"] else None
        body = (b'{"requests":[' + b",".join(docs) + b'],"next_cursor":'
                + orjson.dumps(cursor) + b"}")
        query = request.scope["query_string"].decode("latin-1")
        self.local.keep(PAGE_PREFIX + query, body, stamp, stamp_key=PAGE_PREFIX)
        return Response(body, 200, media_type=JSON)

    async def list_templates(self, request: Request) -> Response:
        p = self.params.parse(request, "list_templates")
        own = {param.name for param in QUERY_PARAMS["list_templates"]}
        filters = {k: v for k, v in request.query_params.items() if k not in own}
        stamp = self.local.stamp(keys.TEMPLATES_KEY)
        matching = [t for t in await self._load_templates() if _template_matches(t, filters)]
        body = orjson.dumps({"templates": matching[p["offset"]:p["offset"] + p["limit"]],
                             "total": len(matching)})
        query = request.scope["query_string"].decode("latin-1")
        self.local.keep(f"templates?{query}", body, stamp, stamp_key=keys.TEMPLATES_KEY)
        return Response(body, 200, media_type=JSON)

    async def _load_templates(self) -> list[dict[str, Any]]:
        doc = await self._read(keys.TEMPLATES_KEY)
        if doc is None:
            return []
        version = doc_version(doc)
        if version != self._templates[0]:
            self._templates = (version, orjson.loads(doc)["templates"])
        return self._templates[1]

    async def healthz(self, request: Request) -> Response:
        return Response(b'{"status":"ok"}', 200, media_type=JSON)

    async def readyz(self, request: Request) -> Response:
        try:
            source = await self.cache.ping()
        except CacheUnavailable:
            return error(503, "cache_unavailable", UNREACHABLE)
        templates, status = await self.cache.mget([keys.TEMPLATES_KEY,
                                                   keys.TEMPLATES_STATUS_KEY])
        loaded = _templates_status(status)
        body = {"ready": templates is not None, "reading_from": source,
                "replica_configured": self.cache.replica is not None,
                "replica_follows": source == "replica",
                # Subscribed to a projector announcement source: long-polls wake at once.
                "notifications_live": self.local.live_sources > 0,
                # Subscribed to every source: repeated polls are answered from this process.
                "local_views_live": self.local.enabled, "templates": loaded}
        if templates is None:
            # HostFactory drops a provider that offers no template: not ready, and why.
            body["error"] = "no_templates"
            body["reason"] = "no templates loaded: " + (
                "; ".join(loaded.get("file_problems") or []) or "the worker has not loaded "
                "the templates file yet")
        return Response(orjson.dumps(body), 200 if templates is not None else 503,
                        media_type=JSON)

    async def metrics_text(self, request: Request) -> Response:
        return Response(self.metrics.render(), 200, media_type=CONTENT_TYPE)

    async def openapi_json(self, request: Request) -> Response:
        return Response(openapi.document(self.params.max_wait_s), 200, media_type=JSON)


def _templates_status(raw: bytes | None) -> dict[str, Any]:
    """The worker's last word on the templates file: how many loaded, which were refused."""
    try:
        status = orjson.loads(raw) if raw else {}
    except orjson.JSONDecodeError:
        status = {}
    if not isinstance(status, dict):
        status = {}
    refused = status.get("refused") if isinstance(status.get("refused"), list) else []
    return {"loaded": status.get("loaded"), "refused": refused,
            "file_problems": status.get("file_problems") or []}


def _template_matches(template: dict[str, Any], filters: dict[str, str]) -> bool:
    for field, wanted in filters.items():
        if field in template:
            value = template[field]
        else:
            attribute = (template.get("attributes") or {}).get(field)
            value = attribute[1] if isinstance(attribute, list) and len(attribute) > 1 else None
        if value is None or str(value) != wanted:
            return False
    return True
