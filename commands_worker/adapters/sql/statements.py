"""The statements of the hot path, built once: constructing Core statements per call costs
more than running them here."""

from __future__ import annotations

from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from commands_worker.adapters.sql.tables import (
    commands,
    dead_letters,
    machines,
    outbox,
    requests,
    templates,
)


def _by(table: sa.Table, column: str) -> sa.Select[Any]:
    return table.select().where(table.c[column] == sa.bindparam("key"))


def _versioned_update(table: sa.Table, key: str, columns: tuple[str, ...]) -> sa.Update:
    return (table.update()
            .where(table.c[key] == sa.bindparam("b_key"),
                   table.c.version == sa.bindparam("b_expected"))
            .values({c: sa.bindparam(c) for c in columns}))


MACHINE_COLUMNS = ("status", "details", "observed_at", "version", "updated_at", "name",
                   "return_request_id", "late")
REQUEST_COLUMNS = ("status", "version", "updated_at", "deadline_at", "details")
COMMAND_COLUMNS = ("task", "outcome", "reason", "request_id", "machine_id", "correlation_id",
                    "recorded_at", "version")
STMT: Final = {
    "template": _by(templates, "template_id"),
    "request": _by(requests, "request_id"),
    "machine": _by(machines, "machine_id"),
    "commands": commands.select().where(
        commands.c.command_id.in_(sa.bindparam("keys", expanding=True))),
    "dead_letter": _by(dead_letters, "command_id"),

    "insert_machine": machines.insert(),
    "insert_command": commands.insert(),
    "update_request": _versioned_update(requests, "request_id", REQUEST_COLUMNS),
    "update_machine": _versioned_update(machines, "machine_id", MACHINE_COLUMNS),
    "update_command": _versioned_update(commands, "command_id", COMMAND_COLUMNS),
    "requests_in": requests.select().where(
        requests.c.request_id.in_(sa.bindparam("keys", expanding=True))),
    "machines_in": machines.select().where(
        machines.c.machine_id.in_(sa.bindparam("keys", expanding=True))),
    "machines_of_in": machines.select().where(sa.or_(
        machines.c.request_id.in_(sa.bindparam("keys", expanding=True)),
        machines.c.return_request_id.in_(sa.bindparam("keys", expanding=True)))),
    "machines_named": machines.select().where(machines.c.name == sa.bindparam("key"))
    .order_by(machines.c.created_at.desc()).limit(20),
    "settle_outbox": outbox.update().where(
        outbox.c.id.in_(sa.bindparam("keys", expanding=True)))
    .values(projected_at=sa.bindparam("at")),
}


def _any(column: sa.Column[Any], element: Any = sa.String) -> sa.ColumnElement[bool]:
    return column == sa.any_(sa.bindparam("keys", type_=postgresql.ARRAY(element)))


# PostgreSQL: one statement text whatever the number of keys (``= ANY(array)``), so psycopg
# parses and prepares each once, not once per list length as with ``IN (…)``.
POSTGRES_STMT: Final = {
    **STMT,
    "commands": commands.select().where(_any(commands.c.command_id)),
    "requests_in": requests.select().where(_any(requests.c.request_id)),
    "machines_in": machines.select().where(_any(machines.c.machine_id)),
    "machines_of_in": machines.select().where(sa.or_(
        _any(machines.c.request_id), _any(machines.c.return_request_id))),
    "settle_outbox": outbox.update().where(_any(outbox.c.id, sa.BigInteger))
    .values(projected_at=sa.bindparam("at")),
}
