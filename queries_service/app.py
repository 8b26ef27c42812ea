"""The HTTP endpoints. Views are served as the projector stored them: no store, no broker,
no re-serialisation of a document on the way out."""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import re
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, Final

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from queries_service import openapi
from queries_service.cache import CacheUnavailable, ReadCache, doc_version
from queries_service.hot_views import FastPath, LocalViews
from queries_service.notifications import ViewNotifier
from shared import keys
from shared.settings import Settings
from shared.views import REQUEST_STATUSES

JSON: Final = "application/json"
_ID_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@+=-]{0,199}$")
MAX_PAGE: Final = 500


class BadParameter(Exception):
    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"{name}: {problem}")
        self.name, self.problem = name, problem


def _error(status: int, error: str, detail: Any = None) -> Response:
    return Response(orjson.dumps({"error": error, "detail": detail}), status, media_type=JSON)


def _int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    if not re.fullmatch(r"[0-9]{1,10}", raw):
        raise BadParameter(name, f"must be an integer from {low} to {high}")
    value = int(raw)
    if not low <= value <= high:
        raise BadParameter(name, f"must be an integer from {low} to {high}")
    return value


def _bool_param(request: Request, name: str, default: bool) -> bool:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    lowered = raw.lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise BadParameter(name, "must be true or false")


def _etag(key: str, doc: bytes) -> str:
    return f'"{key.removeprefix(keys.PREFIX)}@{doc_version(doc)}"'


def _document(request: Request, key: str, doc: bytes | None, what: str, ident: str) -> Response:
    if doc is None:
        return _error(404, "not_found", f"no {what} {ident!r}")
    etag = _etag(key, doc)
    headers = {"etag": etag, "cache-control": "no-cache"}
    if etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    return Response(doc, 200, headers=headers, media_type=JSON)


def _ident(request: Request, name: str) -> str | None:
    value: str = request.path_params[name]
    return value if _ID_RE.match(value) else None


class QueryApp:
    """The endpoints, over one read cache."""

    def __init__(self, cache: ReadCache, settings: Settings, local: LocalViews) -> None:
        self.cache = cache
        self.local = local
        self.max_wait_s = settings.query_max_wait_s
        self.notifier = ViewNotifier(cache, local)
        self.requests_served: Counter[tuple[str, int]] = Counter()
        self._reading: dict[str, asyncio.Future[bytes | None]] = {}
        self._templates: tuple[int, list[dict[str, Any]]] = (-1, [])

    async def get_request(self, request: Request) -> Response:
        ident = _ident(request, "request_id")
        if ident is None:
            return _error(404, "not_found", "no such request")
        with_machines = _bool_param(request, "include_machines", True)
        min_version = _int_param(request, "min_version", 0, 0, 2**31)
        wait_s = _int_param(request, "wait", 0, 0, self.max_wait_s)
        key = keys.request_key(ident) if with_machines else keys.request_summary_key(ident)
        if wait_s and min_version:
            doc = await self._wait_for(key, min_version, wait_s)
        else:
            doc = await self._read(key, min_version)
        return _document(request, key, doc, "request", ident)

    async def _read(self, key: str, min_version: int = 0) -> bytes | None:
        """A view from this process if it is known current, else from Redis (then kept).
        Concurrent reads of one key share one Redis round trip: a thousand long-polls woken
        by one projection cost one read, not a thousand."""
        doc = self.local.get(key)
        if doc is not None and (not min_version or doc_version(doc) >= min_version):
            return doc
        pending = self._reading.get(key)
        if pending is not None:
            doc = await asyncio.shield(pending)
            if doc is None or doc_version(doc) >= min_version:
                return doc
        future: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()
        self._reading[key] = future
        try:
            stamp = self.local.stamp(key)
            doc = await self.cache.get(key, min_version)
            if doc is not None:
                self.local.keep(key, doc, stamp)
            future.set_result(doc)
            return doc
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: a failed shared read is reported by each caller
            raise
        finally:
            if self._reading.get(key) is future:
                del self._reading[key]

    async def _wait_for(self, key: str, min_version: int, wait_s: int) -> bytes | None:
        """Hold the poll until the view reaches ``min_version`` or ``wait_s`` pass."""
        deadline = asyncio.get_running_loop().time() + wait_s
        with self.notifier.waiting(key, min_version) as event:
            while True:
                doc = await self._read(key, min_version)
                left = deadline - asyncio.get_running_loop().time()
                if (doc is not None and doc_version(doc) >= min_version) or left <= 0:
                    return doc
                event.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), left)

    async def list_machines(self, request: Request) -> Response:
        """The machines of one request, in the order they were first reported."""
        ident = _ident(request, "request_id")
        doc = await self.cache.get(keys.request_key(ident)) if ident else None
        if doc is None:
            return _error(404, "not_found", f"no request {ident!r}")
        limit = _int_param(request, "limit", 100, 1, MAX_PAGE)
        after = _decode_machine_cursor(request.query_params.get("cursor"))
        machines = sorted(orjson.loads(doc)["machines"],
                          key=lambda m: (m["created_at"], m["machine_id"]))
        page = [m for m in machines if (m["created_at"], m["machine_id"]) > after][:limit]
        cursor = (_encode_machine_cursor(page[-1]["created_at"], page[-1]["machine_id"])
                  if len(page) == limit else None)
        return Response(orjson.dumps({"machines": page, "next_cursor": cursor}), 200,
                        media_type=JSON)

    async def get_machine(self, request: Request) -> Response:
        ident = _ident(request, "machine_id")
        if ident is None:
            return _error(404, "not_found", "no such machine")
        key = keys.machine_key(ident)
        doc = await self._read(key, _int_param(request, "min_version", 0, 0, 2**31))
        return _document(request, key, doc, "machine", ident)

    async def get_command(self, request: Request) -> Response:
        ident = _ident(request, "command_id")
        if ident is None:
            return _error(404, "not_found", "no such command")
        key = keys.command_key(ident)
        return _document(request, key, await self._read(key), "command", ident)

    async def list_requests(self, request: Request) -> Response:
        status = request.query_params.get("status") or None
        if status is not None and status not in REQUEST_STATUSES:
            raise BadParameter("status", f"must be one of {', '.join(REQUEST_STATUSES)}")
        limit = _int_param(request, "limit", 50, 1, MAX_PAGE)
        after = _decode_cursor(request.query_params.get("cursor"))
        with_machines = _bool_param(request, "include_machines", False)
        index = keys.requests_by_status_key(status) if status else keys.REQUESTS_INDEX_KEY
        rows = await self.cache.zrange_after(index, after, limit)
        ids = [member.decode() for member, _ in rows]
        key_of = keys.request_key if with_machines else keys.request_summary_key
        docs = [d for d in await self.cache.mget([key_of(i) for i in ids]) if d is not None]
        cursor = _encode_cursor(int(rows[-1][1])) if len(rows) == limit else None
        body = (b'{"requests":[' + b",".join(docs) + b'],"next_cursor":'
                + orjson.dumps(cursor) + b"}")
        return Response(body, 200, media_type=JSON)

    async def list_templates(self, request: Request) -> Response:
        limit = _int_param(request, "limit", 100, 1, 1000)
        offset = _int_param(request, "offset", 0, 0, 10**6)
        filters = {k: v for k, v in request.query_params.items() if k not in ("limit", "offset")}
        stamp = self.local.stamp(keys.TEMPLATES_KEY)
        templates = await self._load_templates()
        matching = [t for t in templates if _template_matches(t, filters)]
        body = orjson.dumps({"templates": matching[offset:offset + limit],
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
        except CacheUnavailable as exc:
            return _error(503, "cache_unavailable", str(exc))
        body = {"ready": True, "reading_from": source,
                "replica_configured": self.cache.replica is not None}
        return Response(orjson.dumps(body), 200, media_type=JSON)

    async def metrics(self, request: Request) -> Response:
        lines = ["# TYPE hf_query_long_polls_waiting gauge",
                 f"hf_query_long_polls_waiting {self.notifier.waiting_count()}",
                 "# TYPE hf_query_requests_total counter"]
        for (route, code), count in sorted(self.requests_served.items()):
            lines.append(f'hf_query_requests_total{{route="{route}",code="{code}"}} {count}')
        lines += ["# TYPE hf_query_local_hits_total counter",
                  f"hf_query_local_hits_total {self.local.hits}"]
        for name, value in sorted(self.cache.counters.items()):
            lines.append(f"# TYPE hf_query_cache_{name}_total counter")
            lines.append(f"hf_query_cache_{name}_total {value}")
        return Response("\n".join(lines) + "\n", 200,
                        media_type="text/plain; version=0.0.4")

    async def openapi_json(self, request: Request) -> Response:
        return Response(openapi.document(), 200, media_type=JSON)


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


def _encode_cursor(score: int) -> str:
    return base64.urlsafe_b64encode(f"s{score}".encode()).decode().rstrip("=")


def _encode_machine_cursor(created_at: float, machine_id: str) -> str:
    raw = orjson.dumps([created_at, machine_id])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_machine_cursor(cursor: str | None) -> tuple[float, str]:
    if not cursor:
        return (float("-inf"), "")
    try:
        created_at, machine_id = orjson.loads(
            base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        return float(created_at), str(machine_id)
    except (binascii.Error, ValueError, TypeError):
        raise BadParameter("cursor", "is not a cursor this service returned") from None


def _decode_cursor(cursor: str | None) -> int:
    if not cursor:
        return 0
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise BadParameter("cursor", "is not a cursor this service returned") from None
    if not re.fullmatch(r"s[0-9]{1,18}", text):
        raise BadParameter("cursor", "is not a cursor this service returned")
    return int(text[1:])


Endpoint = Callable[[Request], Awaitable[Response]]


def _guarded(app: QueryApp, name: str, endpoint: Endpoint) -> Endpoint:
    """Turn bad parameters and an unreachable cache into JSON answers, and count."""

    async def guarded(request: Request) -> Response:
        try:
            response = await endpoint(request)
        except BadParameter as exc:
            response = _error(422, "invalid_parameter", {"parameter": exc.name,
                                                         "problem": exc.problem})
        except CacheUnavailable as exc:
            response = _error(503, "cache_unavailable", str(exc))
        app.requests_served[(name, response.status_code)] += 1
        return response

    return guarded


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return _error(exc.status_code, "not_found" if exc.status_code == 404 else "http_error",
                  exc.detail)


async def _server_error(request: Request, exc: Exception) -> Response:
    return _error(500, "internal_error", "the service failed; see its log")


def create_app(settings: Settings | None = None, cache: ReadCache | None = None) -> ASGIApp:
    settings = settings or Settings.from_env()
    holder: dict[str, QueryApp] = {}
    local = LocalViews()

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        own = cache or ReadCache.from_settings(settings)
        query_app = holder["app"] = QueryApp(own, settings, local)
        query_app.notifier.start()
        yield
        await query_app.notifier.stop()
        if cache is None:
            await own.close()

    def route(path: str, name: str) -> Route:
        async def endpoint(request: Request) -> Response:
            query_app = holder["app"]
            handler = _guarded(query_app, name, getattr(query_app, name))
            return await handler(request)

        return Route(path, endpoint, methods=["GET"], name=name)

    routes = [
        route("/requests/{request_id}", "get_request"),
        route("/requests/{request_id}/machines", "list_machines"),
        route("/requests", "list_requests"),
        route("/machines/{machine_id}", "get_machine"),
        route("/commands/{command_id}", "get_command"),
        route("/templates", "list_templates"),
        route("/healthz", "healthz"),
        route("/readyz", "readyz"),
        route("/metrics", "metrics"),
        route("/openapi.json", "openapi_json"),
    ]
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={HTTPException: _http_error, Exception: _server_error})

    def count(route: str, status: int) -> None:
        holder["app"].requests_served[(route, status)] += 1

    # Outermost the tokens, then the fast path for views known current, then the framework.
    return BearerTokens(FastPath(app, local, count), settings.query_api_tokens)


class BearerTokens:
    """Optional bearer tokens (``QUERY_API_TOKENS``), compared in constant time. Liveness and
    readiness stay open for orchestrators."""

    OPEN_PATHS: Final = frozenset({"/healthz", "/readyz"})

    def __init__(self, app: ASGIApp, tokens: tuple[str, ...]) -> None:
        self.app = app
        self.tokens = [t.encode() for t in tokens]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (not self.tokens or scope["type"] != "http" or scope["path"] in self.OPEN_PATHS
                or self._allowed(scope)):
            await self.app(scope, receive, send)
            return
        response = _error(401, "unauthorized", "send Authorization: Bearer <token>")
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
