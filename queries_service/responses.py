"""How the service answers: JSON errors, and views with their ETags (the one home of the ETag
rule, used by the endpoints and by the fast path alike)."""

from __future__ import annotations

import logging
from typing import Any, Final

import orjson
from starlette.requests import Request
from starlette.responses import Response

from queries_service.cache import doc_version
from shared import keys

log = logging.getLogger("hostfactory.queries")
JSON: Final = "application/json"
# What a client is told when Redis does not answer; where it was looked for is in the log,
# not in an answer anyone may read (readiness is open even when tokens are on).
UNREACHABLE: Final = "the read cache does not answer"


def error(status: int, error: str, detail: Any = None) -> Response:
    return Response(orjson.dumps({"error": error, "detail": detail}), status, media_type=JSON)


def etag(key: str, doc: bytes) -> str:
    """A view's ETag: its key and version, which together name its content."""
    return f'"{key.removeprefix(keys.PREFIX)}@{doc_version(doc)}"'


def not_modified(if_none_match: str, tag: str) -> bool:
    return tag in if_none_match


def not_found(what: str, ident: str) -> Response:
    return error(404, "not_found", f"no {what} {ident!r}")


def document(request: Request, key: str, doc: bytes | None, what: str, ident: str) -> Response:
    """A stored view as it is, with its ETag; 304 when the poller has it, 404 when unknown."""
    if doc is None:
        return not_found(what, ident)
    tag = etag(key, doc)
    headers = {"etag": tag, "cache-control": "no-cache"}
    if not_modified(request.headers.get("if-none-match", ""), tag):
        return Response(status_code=304, headers=headers)
    return Response(doc, 200, headers=headers, media_type=JSON)


def refused(status: int, route: str, path: str, correlation_id: str) -> None:
    """Every request refused or failed, with the poller's ``X-Correlation-ID`` (404s, the
    answer to a poll that came early, are counted in the metrics, not logged)."""
    log.log(logging.ERROR if status >= 500 else logging.WARNING, "request refused", extra={
        "event": "request_refused", "status": status, "route": route, "path": path[:300],
        "correlation_id": correlation_id[:200] or None})


def unreachable(route: str, exc: Exception) -> Response:
    log.warning("read cache unreachable", extra={"event": "cache_unavailable", "route": route,
                                                 "error": str(exc)})
    return error(503, "cache_unavailable", UNREACHABLE)


def failed(exc: BaseException, path: str, correlation_id: str) -> Response:
    log.error("request failed", exc_info=exc, extra={
        "event": "request_failed", "path": path[:300],
        "correlation_id": correlation_id[:200] or None})
    return error(500, "internal_error", "the service failed; see its log")
