"""A hand-written in-memory unit of work for fast handler tests (same contract as SQL)."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterable, Iterator
from dataclasses import replace
from types import TracebackType
from typing import Any, Self

from commands_worker.domain.errors import ConcurrentUpdate
from commands_worker.domain.model import Machine, Request, Template
from commands_worker.service_layer.ports import CommandRecord, DeadLetter, ViewDoc


class FakeState:
    def __init__(self, templates: list[Template] | None = None) -> None:
        self.templates = {t.template_id: t for t in templates or []}
        self.requests: dict[str, Request] = {}
        self.machines: dict[str, Machine] = {}
        self.commands: dict[str, CommandRecord] = {}
        self.dead_letters: list[DeadLetter] = []
        self.outbox: list[ViewDoc] = []
        self.seq = 0


class FakeUnitOfWork:
    def __init__(self, state: FakeState) -> None:
        self.state = state
        self.work: FakeState | None = None
        self.docs: list[ViewDoc] = []

    def __enter__(self) -> Self:
        self.work = copy.deepcopy(self.state)
        self.docs = []
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.work = None

    @property
    def w(self) -> FakeState:
        assert self.work is not None
        return self.work

    def commit(self) -> list[ViewDoc]:
        self.w.outbox.extend(self.docs)
        self.state.__dict__.update(copy.deepcopy(self.w.__dict__))
        docs, self.docs = self.docs, []
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
                       if m.request_id == request_id), key=lambda m: m.machine_id)

    def add_machine(self, machine: Machine) -> None:
        self._insert(self.w.machines, machine.machine_id, machine)

    def save_machine(self, machine: Machine, expected_version: int) -> None:
        self._save(self.w.machines, machine.machine_id, machine, expected_version)

    def get_commands(self, command_ids: list[str]) -> dict[str, CommandRecord]:
        return {c: self.w.commands[c] for c in command_ids if c in self.w.commands}

    @contextlib.contextmanager
    def savepoint(self) -> Iterator[None]:
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
        for i, existing in enumerate(self.w.dead_letters):
            if letter.command_id and existing.command_id == letter.command_id:
                self.w.dead_letters[i] = replace(letter, attempts=existing.attempts + 1)
                return
        self.w.dead_letters.append(letter)

    def emit(self, doc: ViewDoc) -> None:
        self.docs.append(doc)


def templates(**max_numbers: int) -> list[Template]:
    result = []
    for template_id, max_number in max_numbers.items():
        attrs: dict[str, Any] = {"ncpus": ["Numeric", "1"]}
        result.append(Template(template_id.replace("_", "-"), max_number, attrs,
                               {"templateId": template_id.replace("_", "-"),
                                "maxNumber": max_number, "attributes": attrs}))
    return result
