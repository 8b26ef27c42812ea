"""Build the read-cache documents (the views and history) from aggregates. The provider
feed's events are built in ``feed_events``.

Each document is serialised once here, with ``version`` first (the cache's compare-and-set
reads it from the front of the stored bytes), and served as-is by the query service. The same
functions serve the outbox and the rebuild, so a rebuilt view is byte for byte the original.
"""

from __future__ import annotations

from typing import Any

import orjson

from commands_worker.domain.model import MACHINE_FIELDS, Machine, Request, Template
from commands_worker.service_layer.ports import CommandRecord, HistoryEntry, ViewDoc
from shared import keys


def _dumps(doc: dict[str, Any]) -> bytes:
    return orjson.dumps(doc)


def machine_dict(machine: Machine) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "version": machine.version,
        "machine_id": machine.machine_id,
        "request_id": machine.request_id,
        "status": machine.status,
        "result": machine.view_result,
    }
    for name in MACHINE_FIELDS:
        doc[name] = machine.details.get(name)
    doc["units"] = machine.units
    doc["return_request_id"] = machine.return_request_id
    doc["late"] = machine.late
    extra = {k: v for k, v in machine.details.items() if k not in MACHINE_FIELDS}
    if extra:
        doc["metadata"] = dict(sorted(extra.items()))
    doc["observed_at"] = machine.observed_at
    doc["created_at"] = machine.created_at
    doc["updated_at"] = machine.updated_at
    return doc


def machine_doc(machine: Machine) -> ViewDoc:
    return ViewDoc(keys.machine_key(machine.machine_id), machine.version,
                   _dumps(machine_dict(machine)))


def machine_name_doc(machine: Machine) -> ViewDoc | None:
    """Where getReturnRequests finds a host given by name only. Versioned by the machine's
    creation (seconds since 2023-11-14, to fit the outbox's 32-bit version column), so when a
    host name is used again the newer machine holds it."""
    name = machine.details.get("name")
    if not isinstance(name, str) or not name:
        return None
    version = max(1, int(machine.created_at) - 1_700_000_000)
    return ViewDoc(keys.machine_name_key(name), version,
                   _dumps({"version": version, "machine_id": machine.machine_id}))


def _request_dict(request: Request, machines: list[Machine] | None, count: int) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "version": request.version,
        "request_id": request.request_id,
        "template_id": request.template_id,
        "max_number": request.max_number,
        "status": request.status,
        "attributes": request.attributes,
        "kind": request.kind,
        "deadline_at": request.deadline_at,
        "expired": request.expired,
    }
    if request.unknown_machines:
        doc["unknown_machines"] = request.unknown_machines
    if request.unfulfilled:
        doc["unfulfilled"] = request.unfulfilled
        doc["message"] = request.message
    if machines is not None:
        doc["machines"] = [machine_dict(m) for m in machines]
    doc["machine_count"] = count
    doc["created_at"] = request.created_at
    doc["updated_at"] = request.updated_at
    return doc


def request_docs(request: Request, machines: list[Machine]) -> list[ViewDoc]:
    """The full view (machines embedded, ordered by id) and the summary without them."""
    ordered = sorted(machines, key=lambda m: m.machine_id)
    full = _dumps(_request_dict(request, ordered, len(ordered)))
    summary = _dumps(_request_dict(request, None, len(ordered)))
    return [
        ViewDoc(keys.request_key(request.request_id), request.version, full,
                seq=request.seq, status=request.status),
        ViewDoc(keys.request_summary_key(request.request_id), request.version, summary),
    ]


def command_doc(record: CommandRecord, retention_s: int) -> ViewDoc:
    doc: dict[str, Any] = {
        "version": record.version,
        "command_id": record.command_id,
        "task": record.task,
        "outcome": record.outcome,
    }
    if record.reason is not None:
        doc["reason"] = record.reason
    if record.request_id is not None:
        doc["request_id"] = record.request_id
    if record.machine_id is not None:
        doc["machine_id"] = record.machine_id
    doc["recorded_at"] = record.recorded_at
    return ViewDoc(keys.command_key(record.command_id), record.version, _dumps(doc),
                   ttl_s=retention_s)


def templates_doc(templates: list[Template], version: int) -> ViewDoc:
    ordered = sorted(templates, key=lambda t: t.template_id)
    doc = {"version": version, "templates": [t.document for t in ordered]}
    return ViewDoc(keys.TEMPLATES_KEY, version, _dumps(doc))


# --- request history ----------------------------------------------------------------------
def history_member(entry: HistoryEntry) -> bytes:
    """One history entry as its request's history set holds it: the same bytes live and
    after a rebuild, so the set never holds one entry twice."""
    return _dumps({"id": entry.id, "command_id": entry.command_id, "task": entry.task,
                   "outcome": entry.outcome, "reason": entry.reason,
                   "machine_id": entry.machine_id, "version_after": entry.version_after,
                   "at": entry.at})


def history_doc(entries: list[HistoryEntry]) -> ViewDoc:
    """A transaction's history entries (with their store sequence) as one outbox row:
    ``[[request_id, sequence, member], ...]``; the projector adds each to its set."""
    body = orjson.dumps([[e.request_id, e.id, history_member(e).decode()] for e in entries])
    return ViewDoc(keys.HISTORY_BATCH_KEY, entries[0].id, body, status="history")
