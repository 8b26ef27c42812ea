"""HostFactory's answers over HTTP, shaped as its provider-plugin scripts print them: the
plugin's ``getRequestStatus`` is one POST here whatever the number of ids, and any client
that is not a script gets the same answers (docs/hostfactory.md).

The rules (state -> result, deadlines, grace periods) are ``shared.hostfactory``'s; this
module only reads the views they apply to, in as few Redis round trips as the answer allows.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

import orjson
from starlette.requests import Request
from starlette.responses import Response

from queries_service.cache import ReadCache, doc_version
from queries_service.responses import JSON, error
from shared import hostfactory as hf
from shared import keys
from shared.asgi import BadBody, read_json_object
from shared.ids import is_valid_id
from shared.settings import Settings

MAX_STATUS_IDS: Final = 1000
MAX_LISTED_HOSTS: Final = 10_000
MAX_BODY_BYTES: Final = 4 * 1024 * 1024


def listed(body: dict[str, Any], field: str, most: int) -> list[dict[str, Any]]:
    """``body[field]`` as a list of objects: HostFactory sends a single object where IBM's
    document shows one, and an array where real installations do."""
    value = body.get(field)
    if value is None:
        return []
    items = [value] if isinstance(value, dict) else value
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise BadBody(400, f"{field} must be an object or an array of objects")
    if len(items) > most:
        raise BadBody(413, f"{field} may list at most {most} entries (got {len(items)})")
    return items


def _command_of(request_id: str) -> str | None:
    """The command that creates ``req-X`` / ``ret-X`` by default is ``X``."""
    prefix, sep, command_id = request_id.partition("-")
    return command_id if sep and prefix in ("req", "ret") and is_valid_id(command_id) else None


class ShapedEntries:
    """Each request's getRequestStatus entry, serialised, kept for the view version it was
    made from: a poller asks for the same ids every few seconds, and parsing and shaping a
    thousand views was most of the answer's time (bench/README.md). A view's key and version
    name its content (the ETag rule); the clock matters only across the view's deadline, so an
    entry made before the deadline is made again after it. Bounded by bytes: past the bound,
    everything kept is dropped and kept anew."""

    def __init__(self, max_bytes: int = 32 * 2**20) -> None:
        self.max_bytes = max_bytes
        self.size = 0
        self.entries: dict[str, tuple[int, float | None, bytes]] = {}

    def entry(self, key: str, doc: bytes, now: float) -> bytes:
        version = doc_version(doc)
        kept = self.entries.get(key)
        if kept is not None and kept[0] == version and (kept[1] is None or now <= kept[1]):
            return kept[2]
        view = orjson.loads(doc)
        shaped = orjson.dumps(hf.hf_request(view, now))
        if not version:  # not a document the projector wrote: made anew every time
            return shaped
        deadline = view.get("deadline_at")
        # Valid until the deadline passes; past it (or with none) for as long as the version.
        until = float(deadline) if isinstance(deadline, (int, float)) and now <= deadline \
            else None
        if kept is not None:
            self.size -= len(kept[2])
        if self.size + len(shaped) > self.max_bytes:
            self.entries.clear()
            self.size = 0
        self.entries[key] = (version, until, shaped)
        self.size += len(shaped)
        return shaped


def refused_body(exc: BadBody) -> Response:
    return error(exc.status, "length_required" if exc.status == 411 else "invalid_body",
                 exc.problem)


class HostFactoryAnswers:
    def __init__(self, cache: ReadCache, settings: Settings,
                 templates: Callable[[], Awaitable[list[dict[str, Any]]]]) -> None:
        self.cache = cache
        self.shaped = ShapedEntries()
        self.templates = templates
        # An id sent moments ago is "running" (not "unknown") until its deadline could pass.
        self.grace_s = max(settings.request_timeout_s, settings.return_timeout_s)

    async def request_status(self, request: Request) -> Response:
        try:
            body = await read_json_object(request, MAX_BODY_BYTES)
            asked = [e.get("requestId") for e in listed(body, "requests", MAX_STATUS_IDS)]
        except BadBody as exc:
            return refused_body(exc)
        valid = [str(i) for i in asked if is_valid_id(i)]
        docs = dict(zip(valid, await self.cache.mget([keys.request_key(i) for i in valid]),
                        strict=True))
        missing = [i for i in valid if docs[i] is None and _command_of(i)]
        outcomes = dict(zip(missing, await self.cache.mget(
            [keys.command_key(_command_of(i) or "") for i in missing]), strict=True))
        now = time.time()
        answers = []
        for ident in asked:
            doc = docs.get(ident) if isinstance(ident, str) else None
            if doc is not None:
                answers.append(self.shaped.entry(keys.request_key(str(ident)), doc, now))
            elif not isinstance(ident, str) or not is_valid_id(ident):
                answers.append(orjson.dumps({"requestId": ident, "status": "complete_with_error",
                                             "message": "not a valid request id",
                                             "machines": []}))
            else:
                outcome = outcomes.get(ident)
                answers.append(orjson.dumps(hf.hf_unknown(
                    ident, now, self.grace_s, orjson.loads(outcome) if outcome else None)))
        return Response(b'{"requests":[' + b",".join(answers) + b"]}", 200, media_type=JSON)

    async def return_requests(self, request: Request) -> Response:
        try:
            body = await read_json_object(request, MAX_BODY_BYTES)
            hosts = listed(body, "machines", MAX_LISTED_HOSTS)
        except BadBody as exc:
            return refused_body(exc)
        found = await self._machines_of(hosts)
        now = time.time()
        gone, unknown = [], 0
        for host, machine in zip(hosts, found, strict=True):
            if machine is None:
                unknown += 1
                continue
            grace = hf.grace_period(machine, now)
            if grace is not None:
                gone.append({"machine": host.get("name") or machine.get("name") or "",
                             "gracePeriod": grace})
        message = (f"{len(gone)} of {len(hosts)} listed host(s) gone or going"
                   + (f"; {unknown} unknown to this provider, not reported" if unknown else ""))
        return Response(orjson.dumps({"status": "complete", "message": message,
                                      "requests": gone}), 200, media_type=JSON)

    async def _machines_of(self, hosts: list[dict[str, Any]]) -> list[dict[str, Any] | None]:
        """Each listed host's machine view: by ``machineId``, else by ``name``."""
        ids = [h.get("machineId") if is_valid_id(h.get("machineId")) else None for h in hosts]
        docs = await self._mget_views(keys.machine_key, ids)
        by_name = [h.get("name") if d is None and isinstance(h.get("name"), str)
                   and h.get("name") else None for h, d in zip(hosts, docs, strict=True)]
        if any(by_name):
            names = await self._mget_views(keys.machine_name_key, by_name)
            named_ids = [n.get("machine_id") if n else None for n in names]
            named = await self._mget_views(keys.machine_key, named_ids)
            docs = [d if d is not None else n for d, n in zip(docs, named, strict=True)]
        return docs

    async def _mget_views(self, key_of: Callable[[str], str],
                          idents: list[Any]) -> list[dict[str, Any] | None]:
        wanted = [i for i in idents if isinstance(i, str) and i]
        raw = dict(zip(wanted, await self.cache.mget([key_of(i) for i in wanted]), strict=True))
        return [orjson.loads(d) if isinstance(i, str) and (d := raw.get(i)) else None
                for i in idents]

    async def available_templates(self, request: Request) -> Response:
        templates = await self.templates()
        if not templates:
            # HostFactory drops a provider that answers an empty list for good.
            return error(503, "no_templates", "no templates are loaded; see the worker's log")
        return Response(orjson.dumps({"templates": templates,
                                      "message": "Get available templates success."}),
                        200, media_type=JSON)
