"""The write store: SQLAlchemy Core tables and the SQL unit of work.

The ORM stays off the hot path: a command is a handful of Core statements in one transaction.
SQLite (WAL, ``BEGIN IMMEDIATE``) is the default; PostgreSQL is the production store. The
schema is created on start, so a new user runs no migration step.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import replace
from types import TracebackType
from typing import Any, Final, Self

import orjson
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from commands_worker.domain.errors import ConcurrentUpdate, StoreUnavailable
from commands_worker.domain.model import Machine, Request, Template
from commands_worker.service_layer.ports import (
    REPLAYING,
    CommandRecord,
    DeadLetter,
    ProjectedBacklog,
    ViewDoc,
)

metadata = sa.MetaData()
_BigInt = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

templates = sa.Table(
    "templates", metadata,
    sa.Column("template_id", sa.String(200), primary_key=True),
    sa.Column("max_number", sa.Integer, nullable=False),
    sa.Column("attributes", sa.Text, nullable=False),
    sa.Column("document", sa.Text, nullable=False),
)
meta = sa.Table(
    "meta", metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)
requests = sa.Table(
    "requests", metadata,
    sa.Column("seq", _BigInt, primary_key=True, autoincrement=True),
    sa.Column("request_id", sa.String(200), nullable=False, unique=True),
    sa.Column("template_id", sa.String(200), nullable=False),
    sa.Column("max_number", sa.Integer, nullable=False),
    sa.Column("attributes", sa.Text, nullable=False),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)
machines = sa.Table(
    "machines", metadata,
    sa.Column("machine_id", sa.String(200), primary_key=True),
    sa.Column("request_id", sa.String(200), sa.ForeignKey("requests.request_id"),
              nullable=False, index=True),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("details", sa.Text, nullable=False),
    sa.Column("observed_at", sa.Float, nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)
commands = sa.Table(
    "commands", metadata,
    sa.Column("command_id", sa.String(200), primary_key=True),
    sa.Column("task", sa.String(100), nullable=False),
    sa.Column("outcome", sa.String(16), nullable=False),
    sa.Column("reason", sa.Text),
    sa.Column("request_id", sa.String(200)),
    sa.Column("machine_id", sa.String(200)),
    sa.Column("correlation_id", sa.String(200)),
    sa.Column("recorded_at", sa.Float, nullable=False, index=True),
    sa.Column("version", sa.Integer, nullable=False),
)
outbox = sa.Table(
    "outbox", metadata,
    sa.Column("id", _BigInt, primary_key=True, autoincrement=True),
    sa.Column("key", sa.Text, nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("body", sa.LargeBinary, nullable=False),
    sa.Column("ttl_s", sa.Integer, nullable=False),
    sa.Column("seq", _BigInt, nullable=False),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False, index=True),
)
dead_letters = sa.Table(
    "dead_letters", metadata,
    sa.Column("id", _BigInt, primary_key=True, autoincrement=True),
    sa.Column("command_id", sa.String(200), unique=True),
    sa.Column("task", sa.String(200)),
    sa.Column("queue", sa.String(200)),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("raw", sa.Text, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("first_at", sa.Float, nullable=False),
    sa.Column("last_at", sa.Float, nullable=False),
)

_SQLITE_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    # FULL: a command acknowledged to the broker survives a power cut, not only a crash.
    "PRAGMA synchronous=FULL",
    "PRAGMA busy_timeout=30000",
    "PRAGMA foreign_keys=ON",
)


def create_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        return _sqlite_engine(url)
    # Every read of a command's transaction sees one snapshot, so a refusal (machine limit,
    # illegal transition) is never decided on a half-seen concurrent write; a write that
    # collides with a concurrent one fails with a serialization error and is run again.
    return sa.create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5,
                            isolation_level="REPEATABLE READ")


def _sqlite_engine(url: str) -> Engine:
    path = sa.engine.make_url(url).database
    if path and path != ":memory:":
        from pathlib import Path

        Path(path).parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(url, connect_args={"timeout": 30})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # pysqlite's own transaction handling would defer the write lock; we take it up front.
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        for pragma in _SQLITE_PRAGMAS:
            cursor.execute(pragma)
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # Writers queue on the lock instead of failing on a read-to-write upgrade.
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def create_schema(engine: Engine) -> None:
    """Create missing tables; several workers may start at once."""
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.exec_driver_sql("SELECT pg_advisory_xact_lock(727274)")
        metadata.create_all(conn, checkfirst=True)


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


def _load(text: str | bytes) -> Any:
    return orjson.loads(text)


def _request(row: Any) -> Request:
    return Request(
        request_id=row.request_id, template_id=row.template_id, max_number=row.max_number,
        attributes=_load(row.attributes), status=row.status, created_at=row.created_at,
        updated_at=row.updated_at, version=row.version, seq=row.seq,
    )


def _machine(row: Any) -> Machine:
    return Machine(
        machine_id=row.machine_id, request_id=row.request_id, status=row.status,
        observed_at=row.observed_at, created_at=row.created_at, updated_at=row.updated_at,
        version=row.version, details=_load(row.details),
    )


def _copy(machine: Machine | None) -> Machine | None:
    """Handlers change what they load; what this transaction knows stays as stored."""
    return replace(machine, details=dict(machine.details)) if machine else None


def _command(row: Any) -> CommandRecord:
    return CommandRecord(
        command_id=row.command_id, task=row.task, outcome=row.outcome,
        recorded_at=row.recorded_at, reason=row.reason, request_id=row.request_id,
        machine_id=row.machine_id, correlation_id=row.correlation_id, version=row.version,
    )


def _template(row: Any) -> Template:
    return Template(row.template_id, row.max_number, _load(row.attributes), _load(row.document))


def _dead_letter(row: Any) -> DeadLetter:
    return DeadLetter(
        id=row.id, command_id=row.command_id, task=row.task, queue=row.queue,
        reason=row.reason, raw=_load(row.raw), attempts=row.attempts, state=row.state,
        first_at=row.first_at, last_at=row.last_at,
    )


def _inserted_id(result: sa.CursorResult[Any]) -> int:
    key = result.inserted_primary_key
    assert key is not None
    return int(key[0])


_RACE_SQLSTATES = frozenset({"40001", "40P01"})  # serialization failure, deadlock


def translate_errors(exc: DBAPIError) -> Exception:
    """A lost race is a concurrent update; a dead connection is an outage."""
    sqlstate = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
    if isinstance(exc, IntegrityError) or sqlstate in _RACE_SQLSTATES:
        return ConcurrentUpdate(str(exc.orig))
    if isinstance(exc, OperationalError) or exc.connection_invalidated:
        return StoreUnavailable(str(exc.orig))
    return exc


class WriterLock:
    """SQLite lets one writer in at a time and makes the others poll with growing sleeps
    (a 2-process worker lost most of its time there). Writers of this store queue on a
    file lock instead: the kernel wakes the next one the moment the lock is free. A no-op
    for PostgreSQL, where writers run concurrently."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self._fd: int | None = None
        self._pid = 0

    def __enter__(self) -> None:
        if self.path is None:
            return
        if self._fd is None or self._pid != os.getpid():  # a forked child opens its own
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            self._pid = os.getpid()
        fcntl.flock(self._fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        if self.path is not None and self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)


def writer_lock_for(url: str) -> WriterLock:
    database = sa.engine.make_url(url).database
    if url.startswith("sqlite") and database and database != ":memory:":
        return WriterLock(f"{database}.writer-lock")
    return WriterLock(None)


def _by(table: sa.Table, column: str) -> sa.Select[Any]:
    return table.select().where(table.c[column] == sa.bindparam("key"))


def _versioned_update(table: sa.Table, key: str, columns: tuple[str, ...]) -> sa.Update:
    return (table.update()
            .where(table.c[key] == sa.bindparam("b_key"),
                   table.c.version == sa.bindparam("b_expected"))
            .values({c: sa.bindparam(c) for c in columns}))


# Built once: constructing Core statements per call costs more than running them here.
_MACHINE_COLUMNS = ("status", "details", "observed_at", "version", "updated_at")
_COMMAND_COLUMNS = ("task", "outcome", "reason", "request_id", "machine_id", "correlation_id",
                    "recorded_at", "version")
_Q: Final = {
    "template": _by(templates, "template_id"),
    "request": _by(requests, "request_id"),
    "machine": _by(machines, "machine_id"),
    "commands": commands.select().where(
        commands.c.command_id.in_(sa.bindparam("keys", expanding=True))),
    "dead_letter": _by(dead_letters, "command_id"),
    "insert_request": requests.insert(),
    "insert_machine": machines.insert(),
    "insert_command": commands.insert(),
    "insert_outbox": outbox.insert().returning(outbox.c.id, sort_by_parameter_order=True),
    "update_request": _versioned_update(requests, "request_id",
                                        ("status", "version", "updated_at")),
    "update_machine": _versioned_update(machines, "machine_id", _MACHINE_COLUMNS),
    "update_command": _versioned_update(commands, "command_id", _COMMAND_COLUMNS),
    "requests_in": requests.select().where(
        requests.c.request_id.in_(sa.bindparam("keys", expanding=True))),
    "machines_in": machines.select().where(
        machines.c.machine_id.in_(sa.bindparam("keys", expanding=True))),
    "machines_of_in": machines.select().where(
        machines.c.request_id.in_(sa.bindparam("keys", expanding=True))),
    "delete_outbox": outbox.delete().where(
        outbox.c.id.in_(sa.bindparam("keys", expanding=True))),
}


class SqlUnitOfWork:
    """One store transaction. Statements are few, small and prepared once; the outbox rows
    of the whole transaction go in with one multi-row insert at commit."""

    def __init__(self, engine: Engine, projected: ProjectedBacklog,
                 writer_lock: WriterLock | None = None) -> None:
        self.engine = engine
        self.projected = projected
        self.writer_lock = writer_lock or WriterLock(None)
        self._conn: Connection | None = None
        self._docs: list[ViewDoc] = []
        self._templates: dict[str, Template | None] = {}

    @property
    def conn(self) -> Connection:
        assert self._conn is not None, "use the unit of work in a with block"
        return self._conn

    def __enter__(self) -> Self:
        self.writer_lock.__enter__()
        try:
            self._conn = self.engine.connect()
            self._conn.begin()
        except DBAPIError as exc:
            self._close()
            raise translate_errors(exc) from exc
        self._docs = []
        self._templates = {}
        # What this transaction has read or written, so a batch reads each row once.
        self._requests: dict[str, Request | None] = {}
        self._machines: dict[str, Machine | None] = {}
        self._owned: dict[str, list[str]] = {}
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        conn = self._conn
        if conn is not None and conn.in_transaction():
            with contextlib.suppress(DBAPIError):  # the connection may be gone
                conn.rollback()
        self._close()
        if isinstance(exc, DBAPIError):
            raise translate_errors(exc) from exc

    def _close(self) -> None:
        try:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
        finally:
            self.writer_lock.__exit__()

    def _one(self, query: str, key: str) -> Any:
        return self.conn.execute(_Q[query], {"key": key}).first()

    def commit(self) -> list[ViewDoc]:
        done = self.projected.take()
        try:
            if done:
                # Rows projected after earlier commands go in this transaction: no commit of
                # their own. Lost on a crash, they are projected again (a no-op) by the sweep.
                self.conn.execute(_Q["delete_outbox"], {"keys": done})
            docs = self._write_outbox()
            self.conn.commit()
        except BaseException:
            self.projected.add(done)
            raise
        self._docs = []
        return docs

    def _write_outbox(self) -> list[ViewDoc]:
        if not self._docs:
            return []
        now = time.time()
        ids = self.conn.execute(_Q["insert_outbox"], [
            {"key": d.key, "version": d.version, "body": d.body, "ttl_s": d.ttl_s,
             "seq": d.seq, "status": d.status, "created_at": now} for d in self._docs
        ]).scalars().all()
        return [replace(doc, outbox_id=int(i)) for doc, i in zip(self._docs, ids, strict=True)]

    # --- templates, requests, machines ---------------------------------------------------
    def get_template(self, template_id: str) -> Template | None:
        # Templates change only when a worker starts: one read per batch is enough.
        if template_id not in self._templates:
            row = self._one("template", template_id)
            self._templates[template_id] = _template(row) if row else None
        return self._templates[template_id]

    def preload(self, request_ids: Iterable[str], machine_ids: Iterable[str]) -> None:
        """Read in three queries what a batch names: its machines, its requests (and those
        of its machines) and every machine of those requests."""
        wanted_machines = set(machine_ids) - self._machines.keys()
        wanted_requests = set(request_ids)
        if wanted_machines:
            for row in self.conn.execute(_Q["machines_in"], {"keys": list(wanted_machines)}):
                self._machines[row.machine_id] = _machine(row)
                wanted_requests.add(row.request_id)
            for machine_id in wanted_machines - self._machines.keys():
                self._machines[machine_id] = None
        wanted_requests -= self._requests.keys()
        if not wanted_requests:
            return
        for row in self.conn.execute(_Q["requests_in"], {"keys": list(wanted_requests)}):
            self._requests[row.request_id] = _request(row)
        for request_id in wanted_requests:
            self._requests.setdefault(request_id, None)
        self._load_machines_of(wanted_requests)

    def _load_machines_of(self, request_ids: set[str]) -> None:
        """Every machine of these requests, read in one query and remembered."""
        for request_id in request_ids:
            self._owned.setdefault(request_id, [])
        for row in self.conn.execute(_Q["machines_of_in"], {"keys": list(request_ids)}):
            self._machines[row.machine_id] = _machine(row)
            if row.machine_id not in self._owned[row.request_id]:
                self._owned[row.request_id].append(row.machine_id)

    def get_request(self, request_id: str) -> Request | None:
        if request_id not in self._requests:
            row = self._one("request", request_id)
            self._requests[request_id] = _request(row) if row else None
        known = self._requests[request_id]
        return replace(known) if known else None

    def add_request(self, request: Request) -> None:
        result = self.conn.execute(_Q["insert_request"], {
            "request_id": request.request_id, "template_id": request.template_id,
            "max_number": request.max_number, "attributes": _json(request.attributes),
            "status": request.status, "version": request.version,
            "created_at": request.created_at, "updated_at": request.updated_at})
        request.seq = _inserted_id(result)
        self._requests[request.request_id] = replace(request)
        self._owned[request.request_id] = []

    def save_request(self, request: Request, expected_version: int) -> None:
        self._update("update_request", request.request_id, expected_version, {
            "status": request.status, "version": request.version,
            "updated_at": request.updated_at})
        self._requests[request.request_id] = replace(request)

    def _update(self, query: str, key: str, expected: int, values: dict[str, Any]) -> None:
        result = self.conn.execute(_Q[query], {"b_key": key, "b_expected": expected, **values})
        if result.rowcount != 1:
            raise ConcurrentUpdate(f"{key} moved past version {expected}")

    def get_machine(self, machine_id: str) -> Machine | None:
        if machine_id not in self._machines:
            row = self._one("machine", machine_id)
            self._machines[machine_id] = _machine(row) if row else None
        return _copy(self._machines[machine_id])

    def machines_of(self, request_id: str) -> list[Machine]:
        if request_id not in self._owned:
            self._load_machines_of({request_id})
        owned = (self._machines[m] for m in sorted(self._owned[request_id]))
        return [m for m in map(_copy, owned) if m is not None]

    def add_machine(self, machine: Machine) -> None:
        self.conn.execute(_Q["insert_machine"], {
            **self._machine_values(machine), "machine_id": machine.machine_id,
            "request_id": machine.request_id, "created_at": machine.created_at})
        self._machines[machine.machine_id] = _copy(machine)
        owned = self._owned.get(machine.request_id)
        if owned is not None:
            owned.append(machine.machine_id)

    def save_machine(self, machine: Machine, expected_version: int) -> None:
        self._update("update_machine", machine.machine_id, expected_version,
                     self._machine_values(machine))
        self._machines[machine.machine_id] = _copy(machine)

    @staticmethod
    def _machine_values(machine: Machine) -> dict[str, Any]:
        return {"status": machine.status, "details": _json(machine.details),
                "observed_at": machine.observed_at, "version": machine.version,
                "updated_at": machine.updated_at}

    # --- commands, dead letters, outbox -----------------------------------------------
    def get_commands(self, command_ids: list[str]) -> dict[str, CommandRecord]:
        rows = self.conn.execute(_Q["commands"], {"keys": command_ids})
        return {row.command_id: _command(row) for row in rows}

    @contextlib.contextmanager
    def savepoint(self) -> Iterator[None]:
        # Savepoints here never nest, so one fixed name serves (and needs no compiling).
        emitted = len(self._docs)
        known = (dict(self._requests), dict(self._machines),
                 {k: list(v) for k, v in self._owned.items()})
        self.conn.exec_driver_sql("SAVEPOINT hf_command")
        try:
            yield
        except BaseException:
            self.conn.exec_driver_sql("ROLLBACK TO SAVEPOINT hf_command")
            self.conn.exec_driver_sql("RELEASE SAVEPOINT hf_command")
            del self._docs[emitted:]
            self._requests, self._machines, self._owned = known
            raise
        self.conn.exec_driver_sql("RELEASE SAVEPOINT hf_command")

    def record_command(self, record: CommandRecord) -> None:
        values = {c: getattr(record, c) for c in _COMMAND_COLUMNS}
        if record.version == 1:
            self.conn.execute(_Q["insert_command"], {"command_id": record.command_id, **values})
        else:
            self._update("update_command", record.command_id, record.version - 1, values)

    def add_dead_letter(self, letter: DeadLetter) -> None:
        existing = self._one("dead_letter", letter.command_id) if letter.command_id else None
        if existing is None:
            self.conn.execute(dead_letters.insert().values(
                command_id=letter.command_id, task=letter.task, queue=letter.queue,
                reason=letter.reason, raw=_json(letter.raw), attempts=letter.attempts,
                state="open", first_at=letter.first_at, last_at=letter.last_at))
            return
        self.conn.execute(dead_letters.update().where(dead_letters.c.id == existing.id).values(
            reason=letter.reason, raw=_json(letter.raw), state="open",
            attempts=existing.attempts + letter.attempts, last_at=letter.last_at))

    def emit(self, doc: ViewDoc) -> None:
        """Queue a view document for the outbox; written with the commit."""
        self._docs.append(doc)


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
            current = {r.template_id: _template(r) for r in conn.execute(templates.select())}
            row = conn.execute(sa.select(meta.c.value).where(meta.c.name == "templates")).first()
            version = int(row.value) if row else 0
            wanted = {t.template_id: t for t in loaded}
            if wanted != current or version == 0:
                conn.execute(templates.delete())
                if loaded:
                    conn.execute(templates.insert(), [
                        {"template_id": t.template_id, "max_number": t.max_number,
                         "attributes": _json(t.attributes), "document": _json(t.document)}
                        for t in loaded])
                version += 1
                conn.execute(meta.delete().where(meta.c.name == "templates"))
                conn.execute(meta.insert().values(name="templates", value=str(version)))
            return list(wanted.values()), version

    def templates(self) -> tuple[list[Template], int]:
        with self.engine.connect() as conn:
            rows = [_template(r) for r in conn.execute(templates.select())]
            row = conn.execute(sa.select(meta.c.value).where(meta.c.name == "templates")).first()
            return rows, int(row.value) if row else 0

    # --- outbox -----------------------------------------------------------------------
    def pending_docs(self, older_than_s: float, limit: int = 500) -> list[tuple[int, ViewDoc]]:
        cutoff = time.time() - older_than_s
        with self.engine.connect() as conn:
            rows = conn.execute(outbox.select().where(outbox.c.created_at <= cutoff)
                                .order_by(outbox.c.id).limit(limit))
            return [(r.id, ViewDoc(r.key, r.version, bytes(r.body), r.ttl_s, r.seq, r.status))
                    for r in rows]

    def mark_projected(self, outbox_ids: list[int]) -> None:
        if outbox_ids:
            with self.engine.begin() as conn:
                conn.execute(outbox.delete().where(outbox.c.id.in_(outbox_ids)))


    # --- read-side rebuild ------------------------------------------------------------
    def iter_requests(self, batch: int = 500) -> Iterator[tuple[Request, list[Machine]]]:
        last = 0
        while True:
            with self.engine.connect() as conn:
                rows = conn.execute(requests.select().where(requests.c.seq > last)
                                    .order_by(requests.c.seq).limit(batch)).all()
                if not rows:
                    return
                ids = [r.request_id for r in rows]
                owned: dict[str, list[Machine]] = {i: [] for i in ids}
                for m in conn.execute(machines.select().where(machines.c.request_id.in_(ids))):
                    owned[m.request_id].append(_machine(m))
            for row in rows:
                yield _request(row), owned[row.request_id]
            last = rows[-1].seq

    def iter_commands(self, since: float, batch: int = 2000) -> Iterator[CommandRecord]:
        last = ""
        while True:
            with self.engine.connect() as conn:
                rows = conn.execute(
                    commands.select().where(commands.c.recorded_at >= since,
                                            commands.c.command_id > last)
                    .order_by(commands.c.command_id).limit(batch)).all()
            if not rows:
                return
            yield from (_command(r) for r in rows)
            last = rows[-1].command_id

    def purge_commands(self, older_than: float) -> int:
        with self.engine.begin() as conn:
            return int(conn.execute(commands.delete().where(
                commands.c.recorded_at < older_than,
                commands.c.outcome != REPLAYING)).rowcount)

    # --- dead letters -----------------------------------------------------------------
    def add_dead_letter(self, letter: DeadLetter) -> None:
        uow = self.unit_of_work()
        with uow:
            uow.add_dead_letter(letter)
            uow.commit()

    def dead_letters(self, state: str | None = "open", limit: int = 1000) -> list[DeadLetter]:
        query = dead_letters.select().order_by(dead_letters.c.id).limit(limit)
        if state:
            query = query.where(dead_letters.c.state == state)
        with self.engine.connect() as conn:
            return [_dead_letter(r) for r in conn.execute(query)]

    def begin_replay(self, letter_id: int) -> DeadLetter | None:
        """Mark a dead letter replayed and let its command be applied again."""
        with self.engine.begin() as conn:
            row = conn.execute(dead_letters.select().where(dead_letters.c.id == letter_id)).first()
            if row is None:
                return None
            conn.execute(dead_letters.update().where(dead_letters.c.id == letter_id)
                         .values(state="replayed", last_at=time.time()))
            if row.command_id is not None:
                conn.execute(commands.update().where(commands.c.command_id == row.command_id,
                                                     commands.c.outcome == "rejected")
                             .values(outcome=REPLAYING))
            return _dead_letter(row)

    def counts(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            return {
                t.name: int(conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one())
                for t in (requests, machines, commands, outbox, dead_letters)
            }
