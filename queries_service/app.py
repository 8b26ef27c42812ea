"""The query service's one wiring place: the endpoints, their routes, and the layers around
them (bearer tokens outermost, then the fast path for views known current, then Starlette)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Final

from prometheus_client import multiprocess
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from queries_service.cache import CacheUnavailable, ReadCache
from queries_service.endpoints import QueryApp
from queries_service.hot_views import FastPath, LocalViews
from queries_service.metrics import Metrics
from queries_service.parameters import BadParameter
from queries_service.responses import error, failed, refused, unreachable
from queries_service.rsgi import QueryService
from shared.settings import Settings

# Path -> the QueryApp method that answers it (also the route's name in the metrics).
ROUTES: Final = (
    ("/requests/{request_id}", "get_request"),
    ("/requests/{request_id}/machines", "list_machines"),
    ("/requests/{request_id}/history", "request_history"),
    ("/requests", "list_requests"),
    ("/machines/{machine_id}", "get_machine"),
    ("/commands/{command_id}", "get_command"),
    ("/templates", "list_templates"),
    ("/healthz", "healthz"),
    ("/readyz", "readyz"),
    ("/metrics", "metrics_text"),
    ("/openapi.json", "openapi_json"),
    # HostFactory's answers (queries_service/hostfactory.py), POST because an input file
    # may hold a thousand ids.
    ("/hostfactory/request-status", "hostfactory.request_status", "POST"),
    ("/hostfactory/return-requests", "hostfactory.return_requests", "POST"),
    ("/hostfactory/templates", "hostfactory.available_templates"),
)
Endpoint = Callable[[Request], Awaitable[Response]]


def _route(holder: dict[str, QueryApp], path: str, name: str, method: str = "GET") -> Route:
    """A route to ``QueryApp.<name>`` (a dotted name reaches a part of it): bad parameters
    and an unreachable cache become JSON answers, and every answer is counted."""
    owner, _, attribute = name.rpartition(".")

    async def endpoint(request: Request) -> Response:
        query_app = holder["app"]
        started = time.perf_counter()
        try:
            target = getattr(query_app, owner) if owner else query_app
            response = await getattr(target, attribute)(request)
        except BadParameter as exc:
            response = error(422, "invalid_parameter", {"parameter": exc.name,
                                                        "problem": exc.problem})
        except CacheUnavailable as exc:
            response = unreachable(name, exc)
        query_app.metrics.served(name, response.status_code, time.perf_counter() - started)
        assert isinstance(response, Response)
        if response.status_code >= 400 and response.status_code != 404:
            refused(response.status_code, name, request.url.path,
                    request.headers.get("x-correlation-id", ""))
        return response

    return Route(path, endpoint, methods=[method], name=name)


async def _sync_every_second(metrics: Metrics) -> None:
    """Keep this process's kept counts in the metrics (with several server processes, the
    one answering a scrape reads the others' from their files)."""
    while True:
        await asyncio.sleep(1.0)
        metrics.sync()


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return error(exc.status_code, "not_found" if exc.status_code == 404 else "http_error",
                 exc.detail)


async def _server_error(request: Request, exc: Exception) -> Response:
    return failed(exc, request.url.path, request.headers.get("x-correlation-id", ""))


def create_app(settings: Settings | None = None, cache: ReadCache | None = None) -> QueryService:
    settings = settings or Settings.from_env()
    holder: dict[str, QueryApp] = {}
    local, metrics = LocalViews(), Metrics()

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        own = cache or ReadCache.from_settings(settings)
        query_app = holder["app"] = QueryApp(own, settings, local, metrics)
        query_app.notifier.start()
        syncing = asyncio.create_task(_sync_every_second(metrics))
        yield
        syncing.cancel()
        await query_app.notifier.stop()
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]
        if cache is None:
            await own.close()

    app = Starlette(routes=[_route(holder, *route) for route in ROUTES],
                    lifespan=lifespan,
                    exception_handlers={HTTPException: _http_error, Exception: _server_error})
    # /requests/x/ is a 404 (JSON), not a bodyless redirect to /requests/x.
    app.router.redirect_slashes = False
    return QueryService(FastPath(app, local, metrics.served), settings.query_api_tokens, holder,
                        settings.query_max_wait_s)
