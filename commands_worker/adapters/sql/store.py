"""The write store as a whole: start-up, templates, outbox sweeps, listings, dead letters.
Each command's own transaction is a ``SqlUnitOfWork``."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError

from commands_worker.adapters.sql.engine import create_engine, translate_errors, writer_lock_for
from commands_worker.adapters.sql.rows import (
    command_of,
    dead_letter_of,
    machine_of,
    request_of,
    template_of,
    template_row,
)
from commands_worker.adapters.sql.tables import (
    commands,
    create_schema,
    dead_letters,
    history,
    machines,
    meta,
    outbox,
    requests,
    templates,
)
from commands_worker.adapters.sql.unit_of_work import SqlUnitOfWork
from commands_worker.domain.model import Machine, Request, Template
from commands_worker.service_layer.ports import (
    PARKED_PREFIX,
    REPLAYING,
    CommandRecord,
    DeadLetter,
    HistoryEntry,
    ProjectedBacklog,
    ViewDoc,
)


class Store:
    """Operations on the store as a whole: start-up, templates, sweeps, listings."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.projected = ProjectedBacklog()
        self.writer_lock = writer_lock_for(engine.url.render_as_string(hide_password=False))

    @classmethod
    def from_url(cls, url: str) -> Store:
        store = cls(create_engine(url))
        store.create_schema()
        return store

    def create_schema(self) -> None:
        try:
            create_schema(self.engine)
        except DBAPIError as exc:
            raise translate_errors(exc) from exc

    def unit_of_work(self) -> SqlUnitOfWork:
        return SqlUnitOfWork(self.engine, self.projected, self.writer_lock)

    # --- templates --------------------------------------------------------------------
    def load_templates(self, loaded: list[Template]) -> tuple[list[Template], int]:
        """Replace the templates; the list's version grows only when its content changed."""
        with self.engine.begin() as conn:
            current = {r.template_id: template_of(r) for r in conn.execute(templates.select())}
            row = conn.execute(sa.select(meta.c.value).where(meta.c.name == "templates")).first()
            version = int(row.value) if row else 0
            wanted = {t.template_id: t for t in loaded}
            if wanted != current or version == 0:
                conn.execute(templates.delete())
                if loaded:
                    conn.execute(templates.insert(), [template_row(t) for t in loaded])
                version += 1
                conn.execute(meta.delete().where(meta.c.name == "templates"))
                conn.execute(meta.insert().values(name="templates", value=str(version)))
            return list(wanted.values()), version

    def templates(self) -> tuple[list[Template], int]:
        with self.engine.connect() as conn:
            rows = [template_of(r) for r in conn.execute(templates.select())]
            row = conn.execute(sa.select(meta.c.value).where(meta.c.name == "templates")).first()
            return rows, int(row.value) if row else 0

    # --- outbox -----------------------------------------------------------------------
    def pending_docs(self, older_than_s: float, limit: int = 500) -> list[tuple[int, ViewDoc]]:
        cutoff = time.time() - older_than_s
        with self.engine.connect() as conn:
            rows = conn.execute(outbox.select().where(outbox.c.created_at <= cutoff,
                                                      outbox.c.projected_at.is_(None))
                                .order_by(outbox.c.id).limit(limit))
            return [(r.id, _doc_of(r)) for r in rows]

    def mark_projected(self, outbox_ids: list[int]) -> None:
        if outbox_ids:
            with self.engine.begin() as conn:
                conn.execute(outbox.update().where(outbox.c.id.in_(outbox_ids))
                             .values(projected_at=time.time()))

    def projected_since(self, since: float, after_id: int = 0,
                        limit: int = 500) -> list[tuple[int, ViewDoc]]:
        with self.engine.connect() as conn:
            rows = conn.execute(outbox.select().where(
                outbox.c.id > after_id,
                sa.or_(outbox.c.projected_at >= since, outbox.c.projected_at.is_(None)))
                .order_by(outbox.c.id).limit(limit))
            return [(r.id, _doc_of(r)) for r in rows]

    def purge_projected(self, before: float) -> int:
        with self.engine.begin() as conn:
            return int(conn.execute(outbox.delete().where(outbox.c.projected_at < before))
                       .rowcount or 0)

    def last_projected_at(self) -> float | None:
        with self.engine.connect() as conn:
            value = conn.execute(sa.select(sa.func.max(outbox.c.projected_at))).scalar_one()
            return float(value) if value is not None else None

    # --- read-side rebuild ------------------------------------------------------------
    def overdue_requests(self, now: float, limit: int = 500) -> list[str]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(requests.c.request_id)
                .where(requests.c.deadline_at < now,
                       requests.c.status.in_(("pending", "in_progress")))
                .order_by(requests.c.deadline_at).limit(limit)).all()
        return [r.request_id for r in rows]

    def _pages(self, query: sa.Select[Any], column: sa.Column[Any], start: Any,
               batch: int) -> Iterator[Sequence[Any]]:
        """The rows of ``query`` in pages ordered by ``column`` (keyset pagination: each
        page read in a connection of its own, so a long rebuild holds no transaction)."""
        last = start
        while True:
            with self.engine.connect() as conn:
                rows = conn.execute(query.where(column > last).order_by(column)
                                    .limit(batch)).all()
            if not rows:
                return
            yield rows
            last = getattr(rows[-1], column.name)

    def iter_requests(self, batch: int = 500) -> Iterator[tuple[Request, list[Machine]]]:
        for rows in self._pages(requests.select(), requests.c.seq, 0, batch):
            ids = [r.request_id for r in rows]
            owned: dict[str, list[Machine]] = {i: [] for i in ids}
            with self.engine.connect() as conn:
                for m in conn.execute(machines.select().where(sa.or_(
                        machines.c.request_id.in_(ids), machines.c.return_request_id.in_(ids)))):
                    for request_id in (m.request_id, m.return_request_id):
                        if request_id in owned:
                            owned[request_id].append(machine_of(m))
            for row in rows:
                yield request_of(row), owned[row.request_id]

    def iter_history(self, batch: int = 5000) -> Iterator[HistoryEntry]:
        for rows in self._pages(history.select(), history.c.id, 0, batch):
            for r in rows:
                yield HistoryEntry(r.request_id, r.command_id, r.task, r.outcome, r.at,
                                   r.reason, r.machine_id, r.version_after, r.id)

    def iter_commands(self, since: float, batch: int = 2000) -> Iterator[CommandRecord]:
        recent = commands.select().where(commands.c.recorded_at >= since)
        for rows in self._pages(recent, commands.c.command_id, "", batch):
            yield from (command_of(r) for r in rows)

    def purge_commands(self, older_than: float) -> int:
        with self.engine.begin() as conn:
            return int(conn.execute(commands.delete().where(
                commands.c.recorded_at < older_than,
                commands.c.outcome != REPLAYING)).rowcount)

    # --- dead letters -----------------------------------------------------------------
    def dead_letters(self, state: str | None = "open", limit: int = 1000) -> list[DeadLetter]:
        query = dead_letters.select().order_by(dead_letters.c.id).limit(limit)
        if state:
            query = query.where(dead_letters.c.state == state)
        with self.engine.connect() as conn:
            return [dead_letter_of(r) for r in conn.execute(query)]

    def begin_replay(self, letter_id: int) -> DeadLetter | None:
        """Mark a dead letter replayed and let its command be applied again."""
        with self.engine.begin() as conn:
            row = conn.execute(dead_letters.select().where(dead_letters.c.id == letter_id)).first()
            if row is None:
                return None
            conn.execute(dead_letters.update().where(dead_letters.c.id == letter_id)
                         .values(state="replayed", last_at=time.time()))
            if row.command_id is not None:
                reopened = {row.command_id, row.command_id.removeprefix(PARKED_PREFIX)}
                conn.execute(commands.update().where(commands.c.command_id.in_(reopened),
                                                     commands.c.outcome == "rejected")
                             .values(outcome=REPLAYING))
            return dead_letter_of(row)

    def has_requests(self) -> bool:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(requests.c.request_id).limit(1)).first() is not None

    def counts(self) -> dict[str, int]:
        """Rows per table, and the dead letters still open (not replayed)."""
        with self.engine.connect() as conn:
            found = {
                t.name: int(conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one())
                for t in (requests, machines, commands, dead_letters)
            }
            # The backlog: rows not projected yet (settled rows kept for healing not counted).
            found["outbox"] = int(conn.execute(
                sa.select(sa.func.count()).select_from(outbox)
                .where(outbox.c.projected_at.is_(None))).scalar_one())
            found["dead_letters_open"] = int(conn.execute(
                sa.select(sa.func.count()).select_from(dead_letters)
                .where(dead_letters.c.state == "open")).scalar_one())
            return found


def _doc_of(row: Any) -> ViewDoc:
    return ViewDoc(row.key, row.version, bytes(row.body), row.ttl_s, row.seq, row.status)
