"""A hand-written in-memory store for fast tests, held to the same contract as the SQL one
(``tests/integration/test_store_contract.py`` runs over both)."""

from __future__ import annotations

import contextlib
import copy
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Any, Self

from commands_worker.domain.errors import ConcurrentUpdate
from commands_worker.domain.model import Machine, Request, Template
from commands_worker.service_layer import ports
from commands_worker.service_layer.documents import history_doc
from commands_worker.service_layer.ports import (
    CommandRecord,
    DeadLetter,
    HistoryEntry,
    ProjectedBacklog,
    ViewDoc,
)


@dataclass
class FakeState:
    templates: dict[str, Template] = field(default_factory=dict)
    templates_version: int = 0
    requests: dict[str, Request] = field(default_factory=dict)
    machines: dict[str, Machine] = field(default_factory=dict)
    commands: dict[str, CommandRecord] = field(default_factory=dict)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    outbox: list[ViewDoc] = field(default_factory=list)
    outbox_at: dict[int, float] = field(default_factory=dict)
    projected_at: dict[int, float] = field(default_factory=dict)
    history: list[HistoryEntry] = field(default_factory=list)
    seq: int = 0
    ids: int = 0

    @classmethod
    def with_templates(cls, templates: list[Template]) -> FakeState:
        return cls(templates={t.template_id: t for t in templates}, templates_version=1)

    def next_id(self) -> int:
        self.ids += 1
        return self.ids


class FakeUnitOfWork:
    """One transaction: a private copy of the state, published whole on commit. Transactions
    take turns (like SQLite's single writer), so none is lost to another."""

    def __init__(self, state: FakeState, projected: ProjectedBacklog | None = None,
                 lock: threading.RLock | None = None) -> None:
        self.state = state
        self.projected = projected or ProjectedBacklog()
        self.lock = lock or threading.RLock()
        self.work: FakeState | None = None
        self.docs: list[ViewDoc] = []

    def __enter__(self) -> Self:
        self.lock.acquire()
        self.work = copy.deepcopy(self.state)
        self.docs = []
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.work = None
        self.lock.release()

    @property
    def w(self) -> FakeState:
        assert self.work is not None, "use the unit of work in a with block"
        return self.work

    def commit(self) -> list[ViewDoc]:
        now = time.time()
        for outbox_id in self.projected.take():
            self.w.projected_at.setdefault(outbox_id, now)
        docs = [replace(d, outbox_id=self.w.next_id()) for d in self.docs]
        for doc in docs:
            self.w.outbox.append(doc)
            self.w.outbox_at[doc.outbox_id] = now
        self.state.__dict__.update(copy.deepcopy(self.w.__dict__))
        self.docs = []
        return docs

    def preload(self, request_ids: Iterable[str], machine_ids: Iterable[str]) -> None:
        return None

    def get_template(self, template_id: str) -> Template | None:
        return self.w.templates.get(template_id)

    def get_request(self, request_id: str) -> Request | None:
        found = self.w.requests.get(request_id)
        return copy.deepcopy(found) if found else None

    @staticmethod
    def _insert(rows: dict[str, Any], key: str, row: Request | Machine) -> None:
        if key in rows:
            raise ConcurrentUpdate(key)
        rows[key] = copy.deepcopy(row)

    @staticmethod
    def _save(rows: dict[str, Any], key: str, row: Request | Machine, expected: int) -> None:
        if rows[key].version != expected:
            raise ConcurrentUpdate(key)
        rows[key] = copy.deepcopy(row)

    def add_request(self, request: Request) -> None:
        if request.request_id not in self.w.requests:
            self.w.seq += 1
            request.seq = self.w.seq
        self._insert(self.w.requests, request.request_id, request)

    def save_request(self, request: Request, expected_version: int) -> None:
        self._save(self.w.requests, request.request_id, request, expected_version)

    def get_machine(self, machine_id: str) -> Machine | None:
        found = self.w.machines.get(machine_id)
        return copy.deepcopy(found) if found else None

    def machines_of(self, request_id: str) -> list[Machine]:
        return sorted((copy.deepcopy(m) for m in self.w.machines.values()
                       if request_id in (m.request_id, m.return_request_id)),
                      key=lambda m: m.machine_id)

    def machine_named(self, name: str) -> Machine | None:
        named = sorted((m for m in self.w.machines.values() if m.details.get("name") == name),
                       key=lambda m: (m.status in ("terminated", "failed"), -m.created_at))
        return copy.deepcopy(named[0]) if named else None

    def add_machine(self, machine: Machine) -> None:
        self._insert(self.w.machines, machine.machine_id, machine)

    def save_machine(self, machine: Machine, expected_version: int) -> None:
        self._save(self.w.machines, machine.machine_id, machine, expected_version)

    def get_commands(self, command_ids: list[str]) -> dict[str, CommandRecord]:
        return {c: self.w.commands[c] for c in command_ids if c in self.w.commands}

    @contextlib.contextmanager
    def undoable(self) -> Iterator[None]:
        saved, emitted = copy.deepcopy(self.w), len(self.docs)
        try:
            yield
        except BaseException:
            self.work = saved
            del self.docs[emitted:]
            raise

    def record_command(self, record: CommandRecord) -> None:
        prior = self.w.commands.get(record.command_id)
        if (prior.version if prior else 0) != record.version - 1:
            raise ConcurrentUpdate(record.command_id)
        self.w.commands[record.command_id] = record

    def add_dead_letter(self, letter: DeadLetter) -> None:
        letter = letter.bounded()
        letters = self.w.dead_letters
        for i, existing in enumerate(letters):
            if letter.command_id and existing.command_id == letter.command_id:
                letters[i] = replace(existing, reason=letter.reason, raw=letter.raw,
                                     state="open", attempts=existing.attempts + letter.attempts,
                                     last_at=letter.last_at)
                return
        letters.append(replace(letter, id=self.w.next_id(), state="open"))

    def emit(self, doc: ViewDoc) -> None:
        self.docs.append(doc)

    def add_history(self, entry: HistoryEntry) -> None:
        entry = replace(entry, id=self.w.next_id())
        self.w.history.append(entry)
        self.docs.append(history_doc([entry]))


class FakeStore:
    """The store as a whole, over one ``FakeState``."""

    def __init__(self, state: FakeState | None = None) -> None:
        self.state = state or FakeState()
        self.projected = ProjectedBacklog()
        self.lock = threading.RLock()

    def unit_of_work(self) -> FakeUnitOfWork:
        return FakeUnitOfWork(self.state, self.projected, self.lock)

    def load_templates(self, loaded: list[Template]) -> tuple[list[Template], int]:
        with self.lock:
            wanted = {t.template_id: t for t in loaded}
            if wanted != self.state.templates or self.state.templates_version == 0:
                self.state.templates = wanted
                self.state.templates_version += 1
            return list(wanted.values()), self.state.templates_version

    def templates(self) -> tuple[list[Template], int]:
        return list(self.state.templates.values()), self.state.templates_version

    def pending_docs(self, older_than_s: float, limit: int = 500) -> list[tuple[int, ViewDoc]]:
        cutoff = time.time() - older_than_s
        with self.lock:
            due = [d for d in self.state.outbox if self.state.outbox_at[d.outbox_id] <= cutoff
                   and d.outbox_id not in self.state.projected_at]
        return [(d.outbox_id, d) for d in due[:limit]]

    def mark_projected(self, outbox_ids: list[int]) -> None:
        with self.lock:
            now = time.time()
            for outbox_id in outbox_ids:
                self.state.projected_at[outbox_id] = now

    def projected_since(self, since: float, after_id: int = 0,
                        limit: int = 500) -> list[tuple[int, ViewDoc]]:
        with self.lock:
            at = self.state.projected_at
            found = [d for d in self.state.outbox if d.outbox_id > after_id
                     and at.get(d.outbox_id, since) >= since]
        return [(d.outbox_id, d) for d in found[:limit]]

    def purge_projected(self, before: float) -> int:
        with self.lock:
            gone = {i for i, at in self.state.projected_at.items() if at < before}
            self.state.outbox = [d for d in self.state.outbox if d.outbox_id not in gone]
            for outbox_id in gone:
                del self.state.projected_at[outbox_id]
            return len(gone)

    def last_projected_at(self) -> float | None:
        return max(self.state.projected_at.values(), default=None)

    def iter_requests(self, batch: int = 500) -> Iterator[tuple[Request, list[Machine]]]:
        for request in sorted(self.state.requests.values(), key=lambda r: r.seq):
            yield request, [m for m in self.state.machines.values()
                            if request.request_id in (m.request_id, m.return_request_id)]

    def iter_history(self, batch: int = 5000) -> Iterator[HistoryEntry]:
        yield from list(self.state.history)

    def overdue_requests(self, now: float, limit: int = 500) -> list[str]:
        overdue = sorted((r for r in self.state.requests.values()
                          if r.deadline_at is not None and r.deadline_at < now
                          and r.status in ("pending", "in_progress")),
                         key=lambda r: r.deadline_at or 0)
        return [r.request_id for r in overdue[:limit]]

    def iter_commands(self, since: float, batch: int = 2000) -> Iterator[CommandRecord]:
        yield from (c for _, c in sorted(self.state.commands.items()) if c.recorded_at >= since)

    def purge_commands(self, older_than: float) -> int:
        with self.lock:
            gone = [k for k, c in self.state.commands.items()
                    if c.recorded_at < older_than and c.outcome != ports.REPLAYING]
            for key in gone:
                del self.state.commands[key]
            return len(gone)

    def dead_letters(self, state: str | None = "open", limit: int = 1000) -> list[DeadLetter]:
        return [d for d in self.state.dead_letters if state is None or d.state == state][:limit]

    def begin_replay(self, letter_id: int) -> DeadLetter | None:
        with self.lock:
            letters = self.state.dead_letters
            for i, letter in enumerate(letters):
                if letter.id == letter_id:
                    letters[i] = replace(letter, state="replayed", last_at=time.time())
                    self._reopen(letter.command_id)
                    return letter
            return None

    def _reopen(self, command_id: str | None) -> None:
        for key in {command_id or "", (command_id or "").removeprefix(ports.PARKED_PREFIX)}:
            record = self.state.commands.get(key)
            if record is not None and record.outcome == "rejected":
                self.state.commands[key] = replace(record, outcome=ports.REPLAYING)

    def has_requests(self) -> bool:
        return bool(self.state.requests)

    def counts(self) -> dict[str, int]:
        s = self.state
        return {"requests": len(s.requests), "machines": len(s.machines),
                "commands": len(s.commands),
                "outbox": sum(1 for d in s.outbox if d.outbox_id not in s.projected_at),
                "dead_letters": len(s.dead_letters),
                "dead_letters_open": sum(1 for d in s.dead_letters if d.state == "open")}


def templates(**max_numbers: int) -> list[Template]:
    result = []
    for template_id, max_number in max_numbers.items():
        attrs: dict[str, Any] = {"ncpus": ["Numeric", "1"]}
        result.append(Template(template_id.replace("_", "-"), max_number, attrs,
                               {"templateId": template_id.replace("_", "-"),
                                "maxNumber": max_number, "attributes": attrs}))
    return result
