"""The SQL unit of work: one store transaction. Reads go to the store as they are asked for
(once per row and batch); writes are held until the commit and sent there statement by
statement, each as one executemany (one round trip with psycopg's pipeline), the outbox rows
of the whole transaction in one multi-row insert. Versioned updates are checked by the rows
they changed, all of a statement at once: one that matched no row is a lost race, and the
executor reruns the batch."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator
from dataclasses import replace
from types import TracebackType
from typing import Any, Final, Self

from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError

from commands_worker.adapters.sql.bulk import insert_ids
from commands_worker.adapters.sql.engine import WriterLock, translate_errors
from commands_worker.adapters.sql.rows import (
    command_of,
    copy_machine,
    dumps,
    dumps_anything,
    machine_of,
    machine_values,
    newest_named,
    request_of,
    request_values,
    template_of,
)
from commands_worker.adapters.sql.statements import COMMAND_COLUMNS, POSTGRES_STMT, STMT
from commands_worker.adapters.sql.tables import dead_letters, history, outbox, requests
from commands_worker.domain.errors import ConcurrentUpdate
from commands_worker.domain.model import Machine, Request, Template
from commands_worker.service_layer.documents import history_doc
from commands_worker.service_layer.ports import (
    CommandRecord,
    DeadLetter,
    HistoryEntry,
    ProjectedBacklog,
    ViewDoc,
)
from shared import keys


class _Transaction:
    """What a transaction records beside the aggregates: command outcomes, dead letters,
    history entries and the view documents for the outbox."""

    _conn: Connection | None
    stmt: dict[str, Any]
    _docs: list[ViewDoc]
    _history: list[HistoryEntry]
    # Writes held for the commit: (statement, parameters).
    _held: list[tuple[str, dict[str, Any]]]

    @property
    def conn(self) -> Connection:
        assert self._conn is not None, "use the unit of work in a with block"
        return self._conn

    def _keyed(self, query: str, keys: Iterable[Any]) -> Iterator[Any]:
        """The rows of a query by a list of keys, a bounded chunk of keys per statement
        (SQLite refuses a statement with too many variables: a large batch is not an
        outage)."""
        for chunk in _chunks(list(keys)):
            yield from self.conn.execute(self.stmt[query], {"keys": chunk})

    def _one(self, query: str, key: str) -> Any:
        return self.conn.execute(self.stmt[query], {"key": key}).first()

    def _update(self, query: str, key: str, expected: int, values: dict[str, Any]) -> None:
        self._held.append((query, {"b_key": key, "b_expected": expected, **values}))

    def _flush(self) -> dict[str, int]:
        """The held writes, one executemany per statement, in an order the foreign keys
        allow (requests first: machines refer to them). Returns the sequence the store gave
        each new request."""
        held, self._held = self._held, []
        sequences: dict[str, int] = {}
        for query in FLUSH_ORDER:
            rows = [params for q, params in held if q == query]
            if not rows:
                continue
            if query == "insert_request":
                given = insert_ids(self.conn, requests, rows, "seq")
                sequences = {row["request_id"]: seq for row, seq in zip(rows, given, strict=True)}
                continue
            result = self.conn.execute(self.stmt[query], rows)
            if query.startswith("update_") and result.rowcount != len(rows):
                raise ConcurrentUpdate(f"{query}: {len(rows) - result.rowcount} of {len(rows)} "
                                       "rows moved past the version read")
        return sequences

    def get_commands(self, command_ids: list[str]) -> dict[str, CommandRecord]:
        return {row.command_id: command_of(row) for row in self._keyed("commands", command_ids)}

    def record_command(self, record: CommandRecord) -> None:
        values = {c: getattr(record, c) for c in COMMAND_COLUMNS}
        if record.version == 1:
            self._held.append(("insert_command", {"command_id": record.command_id, **values}))
        else:
            self._update("update_command", record.command_id, record.version - 1, values)

    def add_dead_letter(self, letter: DeadLetter) -> None:
        write_dead_letter(self.conn, letter)

    def emit(self, doc: ViewDoc) -> None:
        """Queue a view document for the outbox; written with the commit."""
        self._docs.append(doc)

    def add_history(self, entry: HistoryEntry) -> None:
        self._history.append(entry)


class SqlUnitOfWork(_Transaction):
    """One store transaction. Statements are few, small and prepared once; the outbox rows
    of the whole transaction go in with one multi-row insert at commit."""

    def __init__(self, engine: Engine, projected: ProjectedBacklog,
                 writer_lock: WriterLock | None = None) -> None:
        self.engine = engine
        self.stmt = POSTGRES_STMT if engine.dialect.name == "postgresql" else STMT
        self.projected = projected
        self.writer_lock = writer_lock or WriterLock(None)
        self._conn: Connection | None = None
        self._docs: list[ViewDoc] = []
        self._held: list[tuple[str, dict[str, Any]]] = []
        self._written: set[str] = set()  # machines added or changed, not yet in the store
        self._templates: dict[str, Template | None] = {}


    def __enter__(self) -> Self:
        self.writer_lock.__enter__()
        try:
            self._conn = self.engine.connect()
            self._conn.begin()
        except DBAPIError as exc:
            self._close()
            raise translate_errors(exc) from exc
        self._docs = []
        self._history = []
        self._held = []
        self._written = set()
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


    def commit(self) -> list[ViewDoc]:
        done = self.projected.take()
        try:
            sequences = self._flush()
            if sequences:  # the new requests' views learn their sequence (their index score)
                self._docs = [_sequenced(d, sequences) for d in self._docs]
            if done:
                # Rows projected after earlier commands are settled in this transaction: no
                # commit of their own. Lost on a crash, they are projected again (a no-op) by
                # the sweep. Settled rows stay a while (Store.purge_projected).
                at = time.time()
                for chunk in _chunks(done):
                    self.conn.execute(self.stmt["settle_outbox"], {"keys": chunk, "at": at})
            history = insert_history(self.conn, self._history)
            docs = insert_outbox(self.conn, self._docs + history)
            self.conn.commit()
        except BaseException:
            self.projected.add(done)
            raise
        self._docs, self._history = [], []
        return docs

    @contextlib.contextmanager
    def undoable(self) -> Iterator[None]:
        """One command: what it held, emitted and learnt is undone if it raises. No store
        savepoint is needed (nor a round trip spent): its writes are still held, and are
        dropped."""
        emitted, told, held = len(self._docs), len(self._history), len(self._held)
        known = (dict(self._requests), dict(self._machines),
                 {k: list(v) for k, v in self._owned.items()}, set(self._written))
        try:
            yield
        except BaseException:
            del self._docs[emitted:]
            del self._history[told:]
            del self._held[held:]
            self._requests, self._machines, self._owned, self._written = known
            raise

    # --- templates, requests, machines ---------------------------------------------------
    def get_template(self, template_id: str) -> Template | None:
        # Templates change only when a worker starts: one read per batch is enough.
        if template_id not in self._templates:
            row = self._one("template", template_id)
            self._templates[template_id] = template_of(row) if row else None
        return self._templates[template_id]

    def preload(self, request_ids: Iterable[str], machine_ids: Iterable[str]) -> None:
        """Read in three queries what a batch names: its machines, its requests (and those
        of its machines) and every machine of those requests."""
        wanted_machines = set(machine_ids) - self._machines.keys()
        wanted_requests = set(request_ids)
        if wanted_machines:
            for row in self._keyed("machines_in", wanted_machines):
                self._machines[row.machine_id] = machine_of(row)
                wanted_requests.add(row.request_id)
            for machine_id in wanted_machines - self._machines.keys():
                self._machines[machine_id] = None
        wanted_requests -= self._requests.keys()
        if not wanted_requests:
            return
        for row in self._keyed("requests_in", wanted_requests):
            self._requests[row.request_id] = request_of(row)
        for request_id in wanted_requests:
            self._requests.setdefault(request_id, None)
        self._load_machines_of(wanted_requests)

    def _load_machines_of(self, request_ids: set[str]) -> None:
        """Every machine of these requests, read in one query and remembered."""
        for request_id in request_ids:
            self._owned.setdefault(request_id, [])
        for row in self._keyed("machines_of_in", request_ids):
            # What this transaction knows is newer than the store (its writes are held).
            if self._machines.get(row.machine_id) is None:
                self._machines[row.machine_id] = machine_of(row)
            self._own(row.machine_id, row.request_id, row.return_request_id)

    def _own(self, machine_id: str, *request_ids: str | None) -> None:
        """Count the machine among the machines known of these requests."""
        for request_id in request_ids:
            owned = self._owned.get(request_id) if request_id else None
            if owned is not None and machine_id not in owned:
                owned.append(machine_id)

    def get_request(self, request_id: str) -> Request | None:
        if request_id not in self._requests:
            row = self._one("request", request_id)
            self._requests[request_id] = request_of(row) if row else None
        known = self._requests[request_id]
        return replace(known) if known else None

    def add_request(self, request: Request) -> None:
        # Held like the other writes; the store gives its sequence (the listings' order,
        # which its view document carries) at the commit, and the documents get it then.
        self._held.append(("insert_request", {
            **request_values(request), "request_id": request.request_id,
            "template_id": request.template_id, "max_number": request.max_number,
            "attributes": dumps(request.attributes), "kind": request.kind,
            "created_at": request.created_at}))
        self._requests[request.request_id] = replace(request)
        # A new return request's machines were linked to it just before.
        self._owned[request.request_id] = [m.machine_id for m in self._machines.values() if m
                                           and m.return_request_id == request.request_id]

    def save_request(self, request: Request, expected_version: int) -> None:
        self._update("update_request", request.request_id, expected_version,
                     request_values(request))
        self._requests[request.request_id] = replace(request)

    def get_machine(self, machine_id: str) -> Machine | None:
        if machine_id not in self._machines:
            row = self._one("machine", machine_id)
            self._machines[machine_id] = machine_of(row) if row else None
        return copy_machine(self._machines[machine_id])

    def machines_of(self, request_id: str) -> list[Machine]:
        if request_id not in self._owned:
            self._load_machines_of({request_id})
        owned = (self._machines[m] for m in sorted(self._owned[request_id]))
        return [m for m in map(copy_machine, owned) if m is not None]

    def add_machine(self, machine: Machine) -> None:
        self._held.append(("insert_machine", {
            **machine_values(machine), "machine_id": machine.machine_id,
            "request_id": machine.request_id, "created_at": machine.created_at}))
        self._machines[machine.machine_id] = copy_machine(machine)
        self._written.add(machine.machine_id)
        self._own(machine.machine_id, machine.request_id)

    def save_machine(self, machine: Machine, expected_version: int) -> None:
        self._update("update_machine", machine.machine_id, expected_version,
                     machine_values(machine))
        self._machines[machine.machine_id] = copy_machine(machine)
        self._written.add(machine.machine_id)
        self._own(machine.machine_id, machine.return_request_id)

    def machine_named(self, name: str) -> Machine | None:
        rows = self.conn.execute(self.stmt["machines_named"], {"key": name}).all()
        # Machines this transaction added or renamed are not in the store yet.
        return copy_machine(newest_named(name, rows, self._machines, self._written))

def _sequenced(doc: ViewDoc, sequences: dict[str, int]) -> ViewDoc:
    if doc.seq or not doc.key.startswith(REQUEST_KEY_PREFIX):
        return doc
    seq = sequences.get(doc.key.removeprefix(REQUEST_KEY_PREFIX))
    return replace(doc, seq=seq) if seq is not None else doc


REQUEST_KEY_PREFIX: Final = keys.request_key("")
# Held statements in the order the commit sends them.
FLUSH_ORDER: Final = ("insert_request", "update_request", "insert_machine", "update_machine",
                      "insert_command", "update_command")


def insert_outbox(conn: Connection, docs: list[ViewDoc]) -> list[ViewDoc]:
    """The transaction's view documents in one multi-row insert; returns them with row ids."""
    if not docs:
        return []
    now = time.time()
    ids = insert_ids(conn, outbox, [
        {"key": d.key, "version": d.version, "body": d.body, "ttl_s": d.ttl_s,
         "seq": d.seq, "status": d.status, "created_at": now} for d in docs], "id")
    return [replace(doc, outbox_id=i) for doc, i in zip(docs, ids, strict=True)]


def insert_history(conn: Connection, entries: list[HistoryEntry]) -> list[ViewDoc]:
    """The transaction's history entries in one multi-row insert; one outbox document
    carries them all, with the sequence the store gave each."""
    if not entries:
        return []
    ids = insert_ids(conn, history, [
        {"request_id": e.request_id, "command_id": e.command_id, "task": e.task[:100],
         "outcome": e.outcome, "reason": e.reason, "machine_id": e.machine_id,
         "version_after": e.version_after, "at": e.at} for e in entries], "id")
    return [history_doc([replace(e, id=i) for e, i in zip(entries, ids, strict=True)])]


def write_dead_letter(conn: Connection, letter: DeadLetter) -> None:
    """A new letter, or one more attempt of the letter its command already has."""
    letter = letter.bounded()
    existing = (conn.execute(STMT["dead_letter"], {"key": letter.command_id}).first()
                if letter.command_id else None)
    if existing is None:
        conn.execute(dead_letters.insert().values(
            command_id=letter.command_id, task=letter.task, queue=letter.queue,
            reason=letter.reason, raw=dumps_anything(letter.raw), attempts=letter.attempts,
            state="open", first_at=letter.first_at, last_at=letter.last_at))
        return
    conn.execute(dead_letters.update().where(dead_letters.c.id == existing.id).values(
        reason=letter.reason, raw=dumps_anything(letter.raw), state="open",
        attempts=existing.attempts + letter.attempts, last_at=letter.last_at))


# Keys per statement: well under SQLite's variable limit (999 before 3.32), twice over for a
# statement that names them twice.
KEYS_PER_STATEMENT: Final = 400


def _chunks(keys: list[Any]) -> Iterator[list[Any]]:
    for start in range(0, len(keys), KEYS_PER_STATEMENT):
        yield keys[start:start + KEYS_PER_STATEMENT]
