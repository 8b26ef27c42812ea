"""What keeps the pair whole between commands: outbox repair, retention, and the full rebuild
of the read cache from the store. Over the ports only: any store, any projector."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

from commands_worker.domain.errors import CacheUnavailable
from commands_worker.domain.model import Machine, Request, Template
from commands_worker.service_layer import documents, feed_events, handlers
from commands_worker.service_layer.executor import Execution, Executor, deadline_envelope
from commands_worker.service_layer.ports import (
    REPLAYING,
    DeadLetter,
    FeedEvent,
    HistoryEntry,
    Projector,
    Store,
    ViewDoc,
)
from shared import hostfactory as hf


def repair_outbox(store: Store, projector: Projector, older_than_s: float = 3.0,
                  limit: int = 500) -> int:
    """Project documents committed but not projected (a crash or a cache outage between
    commit and cache write); returns how many outbox rows were settled."""
    settled = 0
    while True:
        pending = store.pending_docs(older_than_s, limit)
        if not pending:
            return settled
        projector.project(doc for _, doc in pending)
        store.mark_projected([row_id for row_id, _ in pending])
        settled += len(pending)
        if len(pending) < limit:
            return settled


# Settled outbox rows are kept this long after projection: a read cache that lost its last
# writes (a failover to a replica that lagged, a restore from a snapshot) is healed from them
# when what it lacks is newer than this; older losses take a full rebuild.
OUTBOX_KEEP_S = 120.0
# How much earlier than the loss's own mark the healing starts: the clocks of the worker hosts
# that wrote (each stamps what it projected) may differ by this much.
CLOCK_MARGIN_S = 5.0


def purge_projected(store: Store, now: float | None = None) -> int:
    """Forget the settled outbox rows too old to heal from."""
    return store.purge_projected((now or time.time()) - OUTBOX_KEEP_S)


def reproject_since(store: Store, projector: Projector, since: float,
                    limit: int = 500) -> dict[str, Any]:
    """Write again every document projected at ``since`` or later (and any not projected
    yet): views, history entries, outcomes and feed events. Each write is a compare-and-set
    and each event is added once by its id, so what the cache still holds is left as it is."""
    started = time.perf_counter()
    written = total = after = 0
    while True:
        rows = store.projected_since(since, after, limit)
        if not rows:
            break
        written += projector.project(doc for _, doc in rows)
        total += len(rows)
        after = rows[-1][0]
    return {"documents": total, "written": written,
            "seconds": round(time.perf_counter() - started, 3)}


def heal_cache(store: Store, projector: Projector, retention_s: int,
               lost_since: float | None, now: float | None = None) -> dict[str, Any]:
    """Heal a read cache that lost writes: from the kept outbox when the loss is recent
    enough (``lost_since``, the newest time it is known to hold), else by a full rebuild."""
    since = None if lost_since is None else lost_since - CLOCK_MARGIN_S
    if since is not None and since > (now or time.time()) - OUTBOX_KEEP_S:
        return {"healed": "since", "since": round(since, 3),
                **reproject_since(store, projector, since)}
    return {"healed": "rebuild", **rebuild_read_model(store, projector, retention_s)}


def file_dead_letter(executor: Executor, projector: Projector, letter: DeadLetter) -> None:
    """Store a letter the broker side parked, and the rejected outcome of the command it
    names (if nobody recorded one), so ``GET /commands/{id}`` explains it too."""
    docs = executor.file_dead_letter(letter)
    # Committed with its outbox rows: if the cache is away, the next repair projects them.
    with contextlib.suppress(CacheUnavailable):
        projector.project(docs)


def pass_deadlines(store: Store, executor: Executor, projector: Projector,
                   limit: int = 200) -> list[Execution]:
    """End the requests whose deadline passed, each once (``deadline#<request id>``):
    several workers may look at the same time, and one that restarted looks again."""
    overdue = store.overdue_requests(time.time(), limit)
    if not overdue:
        return []
    batch = executor.execute_batch([deadline_envelope(r) for r in overdue])
    # Committed with its outbox rows: if the cache is away, the next repair projects them.
    with contextlib.suppress(CacheUnavailable):
        projector.project(batch.docs)
    return [o for o in batch.outcomes if isinstance(o, Execution) and not o.duplicate]


def purge_expired_commands(store: Store, retention_s: int) -> int:
    return store.purge_commands(time.time() - retention_s)


def _open_work(request: Request, machines: list[Machine],
               templates: dict[str, Template]) -> list[FeedEvent]:
    """The feed events a provider still has to act on for this request: republished by a
    rebuild (a provider dedupes on their ids)."""
    owned = [m for m in machines if m.request_id == request.request_id]
    events = handlers.releases(owned, handlers.REASON_LATE)
    if request.is_final:
        return events
    if request.kind == hf.RETURN:
        return [*events, feed_events.return_event(request, machines)]
    return [*events, feed_events.acquire_event(request, templates.get(request.template_id))]


def _rebuild_docs(store: Store, retention_s: int) -> Iterator[ViewDoc]:
    templates, version = store.templates()
    yield documents.templates_doc(templates, version)
    by_id = {t.template_id: t for t in templates}
    for request, machines in store.iter_requests():
        yield from documents.request_docs(request, machines)
        for event in _open_work(request, machines, by_id):
            yield feed_events.event_doc(event, retention_s, republish=True)
        # A machine is listed by its acquire request and by its return request: once here.
        for machine in (m for m in machines if m.request_id == request.request_id):
            yield documents.machine_doc(machine)
            named = documents.machine_name_doc(machine)
            if named is not None:
                yield named
    told: list[HistoryEntry] = []
    for entry in store.iter_history():
        told.append(entry)
        if len(told) >= 500:
            yield documents.history_doc(told)
            told = []
    if told:
        yield documents.history_doc(told)
    now = time.time()
    for record in store.iter_commands(since=now - retention_s):
        if record.outcome == REPLAYING:
            continue
        remaining = int(record.recorded_at + retention_s - now)
        yield documents.command_doc(record, max(remaining, 1))


def rebuild_read_model(store: Store, projector: Projector, retention_s: int,
                       batch: int = 500) -> dict[str, Any]:
    """Re-project every template, request, machine and retained command outcome."""
    started = time.perf_counter()
    written = total = 0
    chunk: list[ViewDoc] = []
    for doc in _rebuild_docs(store, retention_s):
        chunk.append(doc)
        if len(chunk) >= batch:
            written += projector.project(chunk)
            total += len(chunk)
            chunk = []
    written += projector.project(chunk)
    total += len(chunk)
    return {"documents": total, "written": written,
            "seconds": round(time.perf_counter() - started, 3)}
