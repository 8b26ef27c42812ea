"""The ports handlers depend on, and the records that cross them."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Any, Final, Protocol, Self

from commands_worker.domain.model import Machine, Request, Template
from shared.ids import MAX_ID_LEN, is_valid_id

# The outcome of a rejected command sent through again from its dead letter: the next
# outcome counts, and nothing shows it (it is not served, rebuilt or purged).
REPLAYING: Final = "replaying"


@dataclass(frozen=True)
class CommandRecord:
    """The first outcome of a command: the dedupe record, kept in the same transaction."""

    command_id: str
    task: str
    outcome: str  # applied | rejected | superseded, or REPLAYING
    recorded_at: float
    reason: str | None = None
    request_id: str | None = None
    machine_id: str | None = None
    correlation_id: str | None = None
    version: int = 1


# The command id of a dead letter of a message that never became a command: a prefix, so it
# never collides with the letter of a command that was refused under the same id.
PARKED_PREFIX: Final = "message:"
MAX_LETTER_FIELD: Final = 200  # task, queue: what a producer sent, cut to fit any store


@dataclass(frozen=True)
class DeadLetter:
    """A message the worker refused or could not apply, kept whole so it can be replayed.

    Its short fields come from whatever a producer sent: ``bounded()`` is what a store
    writes, so every column fits on SQLite and PostgreSQL alike (no NUL, no overlong text,
    a ``command_id`` only when it is a valid id)."""

    reason: str
    raw: dict[str, Any]
    first_at: float
    last_at: float
    command_id: str | None = None
    task: str | None = None
    queue: str | None = None
    attempts: int = 1
    id: int | None = None
    state: str = "open"

    def bounded(self) -> DeadLetter:
        command_id = self.command_id
        if command_id is not None and not is_valid_id(command_id.removeprefix(PARKED_PREFIX)):
            command_id = None
        if command_id is not None and len(command_id) > MAX_ID_LEN:
            command_id = None
        return replace(self, command_id=command_id, task=_short(self.task),
                       queue=_short(self.queue), reason=self.reason.replace("\x00", "\\x00"))


def _short(text: str | None) -> str | None:
    if text is None:
        return None
    cleaned = text.replace("\x00", "\\x00")
    return cleaned if len(cleaned) <= MAX_LETTER_FIELD else cleaned[:MAX_LETTER_FIELD - 1] + "…"


@dataclass(frozen=True)
class ViewDoc:
    """One read-cache document at one version, as the projector will write it. A feed event
    is carried as a ViewDoc too (its key the published marker): version 1 is added once,
    ``REPUBLISH`` is added again whatever its marker says (a rebuild's open work)."""

    key: str
    version: int
    body: bytes
    ttl_s: int = 0
    # Requests only: the store's creation sequence (index score) and the status index.
    seq: int = 0
    status: str = ""
    # The outbox row that carries this document (0 until it is written there).
    outbox_id: int = 0


REPUBLISH: Final = 2


@dataclass(frozen=True)
class HistoryEntry:
    """One command as a request's history shows it: every command that touched the request
    or one of its machines, duplicates and refusals included, in the order applied."""

    request_id: str
    command_id: str
    task: str
    outcome: str  # applied | superseded | rejected | duplicate
    at: float
    reason: str | None = None
    machine_id: str | None = None
    version_after: int | None = None  # the request's version after it (applied ones)
    id: int = 0  # the store's sequence: the order, and the read model's score


@dataclass(frozen=True)
class FeedEvent:
    """Something a provider must act on (docs/providers.md): written to the outbox with the
    change that caused it, added to the provider feed once."""

    type: str  # acquire | return | release
    event_id: str
    payload: dict[str, Any]


@dataclass
class Effect:
    """What a handler changed; the executor turns it into views."""

    outcome: str
    request: Request | None = None
    machines: list[Machine] = field(default_factory=list)
    machine: Machine | None = None
    # Machines whose views changed besides ``machine``, and the other requests (with their
    # machines) whose views changed: the acquire requests of returned machines, say.
    changed_machines: list[Machine] = field(default_factory=list)
    other_requests: list[tuple[Request, list[Machine]]] = field(default_factory=list)
    events: list[FeedEvent] = field(default_factory=list)


class UnitOfWork(Protocol):
    """One transaction on the write store. Leaving the block without ``commit`` rolls back."""

    def __enter__(self) -> Self: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    def commit(self) -> list[ViewDoc]:
        """Commit; returns the view documents written to the outbox in this transaction."""
        ...

    def preload(self, request_ids: Iterable[str], machine_ids: Iterable[str]) -> None:
        """A hint: read these in bulk now rather than one by one later."""
        ...

    def get_template(self, template_id: str) -> Template | None: ...

    def get_request(self, request_id: str) -> Request | None: ...

    def add_request(self, request: Request) -> None: ...

    def save_request(self, request: Request, expected_version: int) -> None: ...

    def get_machine(self, machine_id: str) -> Machine | None: ...

    def machines_of(self, request_id: str) -> list[Machine]:
        """An acquire request's machines; a return request's, the machines it gives back."""
        ...

    def machine_named(self, name: str) -> Machine | None:
        """The machine with this host name (the newest, when a name was used again)."""
        ...

    def add_machine(self, machine: Machine) -> None: ...

    def save_machine(self, machine: Machine, expected_version: int) -> None: ...

    def get_commands(self, command_ids: list[str]) -> dict[str, CommandRecord]: ...

    def undoable(self) -> AbstractContextManager[None]:
        """An undoable scope for one command: leaving it with an exception drops what the
        command held, emitted and learnt in it (its writes are held to the commit, so no
        store savepoint is needed); the batch's other commands keep theirs."""
        ...

    def record_command(self, record: CommandRecord) -> None: ...

    def add_dead_letter(self, letter: DeadLetter) -> None: ...

    def add_history(self, entry: HistoryEntry) -> None:
        """Kept with the commit; its view document joins the outbox then (it needs the
        store's sequence number)."""
        ...

    def emit(self, doc: ViewDoc) -> None: ...


class ProjectedBacklog:
    """Outbox rows already projected, to be deleted by the next transaction of this process."""

    def __init__(self) -> None:
        self._ids: list[int] = []
        self._lock = threading.Lock()

    def add(self, ids: Iterable[int]) -> None:
        with self._lock:
            self._ids.extend(i for i in ids if i)

    def take(self) -> list[int]:
        with self._lock:
            ids, self._ids = self._ids, []
            return ids


class Projector(Protocol):
    def project(self, docs: Iterable[ViewDoc]) -> int:
        """Write the documents, never replacing a newer version; returns how many replaced
        an older one."""
        ...


class Store(Protocol):
    """The write store as a whole: what runs beside the units of work."""

    projected: ProjectedBacklog

    def unit_of_work(self) -> UnitOfWork: ...

    def load_templates(self, loaded: list[Template]) -> tuple[list[Template], int]:
        """Replace the templates; the list's version grows only when its content changed."""
        ...

    def templates(self) -> tuple[list[Template], int]: ...

    def pending_docs(self, older_than_s: float, limit: int = 500) -> list[tuple[int, ViewDoc]]:
        """Outbox rows committed at least ``older_than_s`` ago, oldest first."""
        ...

    def mark_projected(self, outbox_ids: list[int]) -> None:
        """Record the rows as projected now; they are kept until ``purge_projected``."""
        ...

    def projected_since(self, since: float, after_id: int = 0,
                        limit: int = 500) -> list[tuple[int, ViewDoc]]:
        """Outbox rows projected at ``since`` or later, or not yet recorded as projected,
        after the row ``after_id``, oldest first: what a cache that lost the writes made
        since ``since`` lacks."""
        ...

    def purge_projected(self, before: float) -> int:
        """Delete the rows projected before ``before``; returns how many."""
        ...

    def last_projected_at(self) -> float | None:
        """When the newest kept row was projected (None: none kept)."""
        ...

    def overdue_requests(self, now: float, limit: int = 500) -> list[str]:
        """Requests not final whose deadline is before ``now``, earliest first."""
        ...

    def iter_requests(self, batch: int = 500) -> Iterator[tuple[Request, list[Machine]]]: ...

    def iter_commands(self, since: float, batch: int = 2000) -> Iterator[CommandRecord]: ...

    def iter_history(self, batch: int = 5000) -> Iterator[HistoryEntry]: ...

    def purge_commands(self, older_than: float) -> int: ...

    def dead_letters(self, state: str | None = "open", limit: int = 1000) -> list[DeadLetter]: ...

    def begin_replay(self, letter_id: int) -> DeadLetter | None:
        """Mark a dead letter replayed and let its command (refused under the letter's
        command id, or under the task id of a parked message) be applied again."""
        ...

    def counts(self) -> dict[str, int]: ...

    def has_requests(self) -> bool:
        """Whether the store holds any request (one indexed row read, not a count)."""
        ...
