"""What keeps the pair whole between commands: outbox repair, the dead-letter inbox,
retention, and the full rebuild of the read cache from the store."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from typing import Any, cast

from commands_worker.bootstrap import Deps
from commands_worker.service_layer import documents as views
from commands_worker.service_layer.ports import DeadLetter, ViewDoc
from shared import keys

log = logging.getLogger("hostfactory.worker")

_DRAIN_LOCK = f"{keys.PREFIX}broker:dead-letter-drain-lock"


def repair_outbox(d: Deps, older_than_s: float = 3.0, limit: int = 500) -> int:
    """Project documents committed but not projected (a crash or a cache outage between
    commit and cache write); returns how many outbox rows were settled."""
    settled = 0
    while True:
        pending = d.store.pending_docs(older_than_s, limit)
        if not pending:
            return settled
        d.projector.project(doc for _, doc in pending)
        d.store.mark_projected([row_id for row_id, _ in pending])
        settled += len(pending)
        if len(pending) < limit:
            return settled


def _letter_from_inbox(item: bytes) -> DeadLetter:
    entry = json.loads(item.decode("utf-8", "replace"))
    at = float(entry.get("at") or time.time())
    command = entry.get("command")
    if isinstance(command, dict):  # a decoded command that could not be applied
        return DeadLetter(reason=str(entry.get("reason")), raw=command, first_at=at,
                          last_at=at, command_id=command.get("id"), task=command.get("task"),
                          queue=command.get("queue"))
    body = entry.get("raw", "")
    task = command_id = None
    try:
        headers = json.loads(body).get("headers") or {}
        task, command_id = headers.get("task"), headers.get("id")
    except (ValueError, AttributeError):
        pass
    return DeadLetter(
        reason=str(entry.get("reason", "undecodable message")),
        raw={"kind": "message", "queue": entry.get("queue"), "body": body},
        first_at=at, last_at=at, queue=entry.get("queue"),
        task=task if isinstance(task, str) else None,
        command_id=f"message:{command_id}" if isinstance(command_id, str) else None,
    )


def drain_dead_letter_inbox(d: Deps, limit: int = 200) -> int:
    """Move dead letters parked in Redis (by the transport or the consumer) into the store."""
    if not d.broker.set(_DRAIN_LOCK, "1", nx=True, px=30_000):
        return 0
    try:
        items = cast(list[bytes], d.broker.lrange(keys.DEAD_LETTER_INBOX_KEY, -limit, -1))
        for item in reversed(items):  # oldest first
            d.store.add_dead_letter(_letter_from_inbox(item))
        if items:
            d.broker.ltrim(keys.DEAD_LETTER_INBOX_KEY, 0, -len(items) - 1)
            log.warning("dead letters stored", extra={"event": "dead_letters_stored",
                                                      "count": len(items)})
        return len(items)
    finally:
        d.broker.delete(_DRAIN_LOCK)


def purge_expired_commands(d: Deps) -> int:
    return d.store.purge_commands(time.time() - d.settings.command_retention_s)


def _rebuild_docs(d: Deps) -> Iterator[ViewDoc]:
    templates, version = d.store.templates()
    yield views.templates_doc(templates, version)
    for request, machines in d.store.iter_requests():
        yield from views.request_docs(request, machines)
        yield from (views.machine_doc(m) for m in machines)
    now = time.time()
    retention = d.settings.command_retention_s
    for record in d.store.iter_commands(since=now - retention):
        if record.outcome == "replaying":
            continue
        doc = views.command_doc(record, retention)
        remaining = int(record.recorded_at + retention - now)
        yield ViewDoc(doc.key, doc.version, doc.body, ttl_s=max(remaining, 1))


def rebuild_read_model(d: Deps, batch: int = 500) -> dict[str, Any]:
    """Re-project every template, request, machine and retained command outcome."""
    started = time.perf_counter()
    written = total = 0
    chunk: list[ViewDoc] = []
    for doc in _rebuild_docs(d):
        chunk.append(doc)
        if len(chunk) >= batch:
            written += d.projector.project(chunk)
            total += len(chunk)
            chunk = []
    written += d.projector.project(chunk)
    total += len(chunk)
    return {"documents": total, "written": written,
            "seconds": round(time.perf_counter() - started, 3)}
