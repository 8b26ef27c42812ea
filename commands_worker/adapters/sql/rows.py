"""Rows to domain objects and back."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import orjson

from commands_worker.domain.model import Machine, Request, Template
from commands_worker.service_layer.ports import CommandRecord, DeadLetter


def dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def dumps_anything(value: Any) -> str:
    """JSON text for whatever a producer sent (a dead letter's raw message): integers beyond
    64 bits, lone surrogates and deep nesting, which ``dumps`` refuses, are written too, and
    what not even that can write is kept as its repr."""
    try:
        return dumps(value)
    except (TypeError, ValueError):
        pass
    try:
        return json.dumps(value, ensure_ascii=True, default=repr)
    except (ValueError, RecursionError):
        return json.dumps({"unencodable": repr(value)[:1_000_000]})


def loads_anything(text: str | bytes) -> Any:
    """What ``dumps_anything`` wrote: ``loads`` refuses lone surrogates, ``json`` does not."""
    try:
        return loads(text)
    except ValueError:
        return json.loads(text)


def loads(text: str | bytes) -> Any:
    return orjson.loads(text)


def request_of(row: Any) -> Request:
    details = loads(row.details) if row.details else {}
    return Request(
        request_id=row.request_id, template_id=row.template_id, max_number=row.max_number,
        attributes=loads(row.attributes), status=row.status, created_at=row.created_at,
        updated_at=row.updated_at, version=row.version, seq=row.seq, kind=row.kind,
        deadline_at=row.deadline_at, unknown_machines=details.get("unknown_machines", []),
        expired=bool(details.get("expired")),
        unfulfilled=int(details.get("unfulfilled", 0)), message=details.get("message"),
    )


def request_values(request: Request) -> dict[str, Any]:
    """The columns a request's change writes."""
    details: dict[str, Any] = {}
    if request.unknown_machines:
        details["unknown_machines"] = request.unknown_machines
    if request.expired:
        details["expired"] = True
    if request.unfulfilled:
        details["unfulfilled"] = request.unfulfilled
    if request.message:
        details["message"] = request.message
    return {"status": request.status, "version": request.version,
            "updated_at": request.updated_at, "deadline_at": request.deadline_at,
            "details": dumps(details) if details else None}


def machine_of(row: Any) -> Machine:
    return Machine(
        machine_id=row.machine_id, request_id=row.request_id, status=row.status,
        observed_at=row.observed_at, created_at=row.created_at, updated_at=row.updated_at,
        version=row.version, details=loads(row.details),
        return_request_id=row.return_request_id, late=bool(row.late),
    )


def copy_machine(machine: Machine | None) -> Machine | None:
    """Handlers change what they load; what this transaction knows stays as stored."""
    return replace(machine, details=dict(machine.details)) if machine else None


def command_of(row: Any) -> CommandRecord:
    return CommandRecord(
        command_id=row.command_id, task=row.task, outcome=row.outcome,
        recorded_at=row.recorded_at, reason=row.reason, request_id=row.request_id,
        machine_id=row.machine_id, correlation_id=row.correlation_id, version=row.version,
    )


# Where a template's resolved user data rides in its stored document (the loader refuses
# hf:-prefixed keys in a templates file, so none of an administrator's keys is taken).
USER_DATA_KEY = "hf:userData"


def template_of(row: Any) -> Template:
    document = loads(row.document)
    user_data = document.pop(USER_DATA_KEY, None)
    return Template(row.template_id, row.max_number, loads(row.attributes), document,
                    user_data)


def template_row(template: Template) -> dict[str, Any]:
    document = template.document
    if template.user_data is not None:
        document = {**document, USER_DATA_KEY: template.user_data}
    return {"template_id": template.template_id, "max_number": template.max_number,
            "attributes": dumps(template.attributes), "document": dumps(document)}


def dead_letter_of(row: Any) -> DeadLetter:
    return DeadLetter(
        id=row.id, command_id=row.command_id, task=row.task, queue=row.queue,
        reason=row.reason, raw=loads_anything(row.raw), attempts=row.attempts, state=row.state,
        first_at=row.first_at, last_at=row.last_at,
    )


def machine_values(machine: Machine) -> dict[str, Any]:
    """The columns a machine's report changes."""
    name = machine.details.get("name")
    return {"status": machine.status, "details": dumps(machine.details),
            "observed_at": machine.observed_at, "version": machine.version,
            "updated_at": machine.updated_at, "name": name if isinstance(name, str) else None,
            "return_request_id": machine.return_request_id, "late": machine.late}


def newest_named(name: str, rows: Sequence[Any], known: dict[str, Machine | None],
                 written: set[str]) -> Machine | None:
    """Of the machines named so (the store's rows read through what the transaction knows,
    and the machines it added or renamed and has not written yet), one still up before one
    that is gone, the newest first: host names are used again."""
    for row in rows:
        known.setdefault(row.machine_id, machine_of(row))
    ids = {row.machine_id for row in rows} | written
    named = [m for i in ids if (m := known.get(i)) is not None and m.details.get("name") == name]
    named.sort(key=lambda m: (m.is_gone, -m.created_at))
    return named[0] if named else None
