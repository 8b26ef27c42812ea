"""Apply one command exactly once: dedupe, validate, handle, record, all in one transaction.

A command's first outcome is stored with its effects; a redelivery finds it and changes
nothing. A refused command's writes are dropped (its undoable scope), and the refusal is
recorded (and dead-lettered) in the same batch transaction as the others' effects. A lost
race runs the command again on fresh state.
"""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Final

from pydantic import ValidationError

from commands_worker.domain.errors import (
    CommandRefused,
    ConcurrentUpdate,
    InvalidCommand,
    RetryLater,
)
from commands_worker.service_layer import documents, feed_events
from commands_worker.service_layer.handlers import (
    DEFAULT_TIMEOUT_S,
    HANDLERS,
    Context,
    PassDeadline,
)
from commands_worker.service_layer.ports import (
    PARKED_PREFIX,
    REPLAYING,
    CommandRecord,
    DeadLetter,
    Effect,
    HistoryEntry,
    UnitOfWork,
    ViewDoc,
)
from shared.commands import COMMAND_MODELS, MAX_MACHINES_PER_REQUEST, Command
from shared.ids import MAX_ID_LEN, default_request_id, default_return_id, is_valid_id
from shared.names import CREATE_REQUEST_TASK, RETURN_MACHINES_TASK

MAX_RACE_ATTEMPTS: Final = 20
DEADLINE_TASK: Final = "deadline"
INTERNAL_MODELS: Final[dict[str, type[Command]]] = {DEADLINE_TASK: PassDeadline}


@dataclass(frozen=True)
class Envelope:
    """A command as it came off the wire: task name, Celery task id, raw kwargs."""

    task: str
    task_id: str
    kwargs: dict[str, Any]
    queue: str | None = None
    args: tuple[Any, ...] = ()
    # False while the worker may still retry: a refusal that may succeed later is not final.
    final_attempt: bool = True
    # Set when the command is refused before it is looked at (admission found the message
    # unusable): it is recorded as rejected with this reason.
    refusal: str = ""
    # The worker's own command (a deadline), never one off the wire.
    internal: bool = False
    # When the worker first took it (0: now): the time of a report that says none.
    arrived_at: float = 0.0

    @property
    def command_id(self) -> str:
        given = self.kwargs.get("command_id")
        if is_valid_id(given):
            assert isinstance(given, str)
            return given
        return self.task_id

    @property
    def correlation_id(self) -> str | None:
        return _id_or_none(self.kwargs.get("correlation_id"))

    def refused(self, reason: str) -> Envelope:
        return replace(self, refusal=reason, final_attempt=True)

    def raw(self) -> dict[str, Any]:
        raw: dict[str, Any] = {"kind": "command", "task": self.task, "id": self.task_id,
                               "queue": self.queue, "kwargs": self.kwargs}
        if self.args:
            raw["args"] = list(self.args)
        return raw


@dataclass(frozen=True)
class Execution:
    record: CommandRecord
    docs: list[ViewDoc]
    duplicate: bool = False


def parse(model: type[Command], kwargs: dict[str, Any]) -> Command:
    try:
        return model.model_validate(kwargs)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(message)'}: {err['msg']}"
            for err in exc.errors(include_url=False, include_input=False)
        )
        raise InvalidCommand(problems) from None


@dataclass(frozen=True)
class Batch:
    """What a batch of commands came to: one outcome per command, in order (an ``Execution``,
    or ``RetryLater`` for one that may apply once earlier commands are in), and every view
    document the batch committed, for one projection."""

    outcomes: list[Execution | RetryLater]
    docs: list[ViewDoc]


class Executor:
    def __init__(self, new_uow: Callable[[], UnitOfWork], retention_s: int,
                 clock: Callable[[], float] = time.time,
                 deadlines: tuple[float, float] = (DEFAULT_TIMEOUT_S, DEFAULT_TIMEOUT_S)) -> None:
        self.new_uow = new_uow
        self.retention_s = retention_s
        self.clock = clock
        # REQUEST_TIMEOUT_S, RETURN_TIMEOUT_S: what new requests get as their deadline.
        self.deadlines = deadlines

    def execute(self, env: Envelope) -> Execution:
        """One command; raises ``RetryLater`` when it may apply once earlier ones are in."""
        batch = self.execute_batch([env])
        outcome = batch.outcomes[0]
        if isinstance(outcome, RetryLater):
            raise outcome
        return Execution(outcome.record, batch.docs, outcome.duplicate)

    def execute_batch(self, envs: list[Envelope]) -> Batch:
        """Many commands in one transaction, each in an undoable scope of its own (the unit of
        work's: it may hold writes rather than ask the store), so a refusal undoes only its
        command. A lost race reruns the batch; a batch that keeps losing
        goes one command at a time."""
        for attempt in range(MAX_RACE_ATTEMPTS if len(envs) == 1 else 2):
            try:
                return self._apply(envs)
            except ConcurrentUpdate:
                time.sleep(random.uniform(0, 0.002 * (attempt + 1)))
        if len(envs) == 1:
            raise ConcurrentUpdate(f"command {envs[0].command_id} lost {MAX_RACE_ATTEMPTS} races")
        singles = [self.execute_batch([env]) for env in envs]
        return Batch([b.outcomes[0] for b in singles], [d for b in singles for d in b.docs])

    def file_dead_letter(self, letter: DeadLetter) -> list[ViewDoc]:
        """Store a letter parked before its message became a command. When it names a valid
        command id that has no outcome yet, that command is recorded as rejected with the
        letter's reason: a poller of that id learns why, and a re-send is a duplicate."""
        now = self.clock()
        with self.new_uow() as uow:
            uow.add_dead_letter(letter)
            command_id = parked_command_id(letter)
            if command_id and not uow.get_commands([command_id]):
                record = CommandRecord(command_id=command_id, task=(letter.task or "")[:100],
                                       outcome="rejected", recorded_at=now,
                                       reason=letter.reason)
                uow.record_command(record)
                uow.emit(documents.command_doc(record, self.retention_s))
            return uow.commit()

    def _apply(self, envs: list[Envelope]) -> Batch:
        now = self.clock()
        outcomes: dict[int, Execution | RetryLater] = {}
        with self.new_uow() as uow:
            known = uow.get_commands(list({env.command_id for env in envs}))
            uow.preload(*_named_ids(envs))
            # Requests before machine reports: the two come through different queues, so
            # their order is not given anyway, and a report gathered into the same batch as
            # its request then applies at once instead of waiting for a retry.
            order = sorted(range(len(envs)), key=lambda i: envs[i].task != CREATE_REQUEST_TASK)
            for index in order:
                env = envs[index]
                prior = known.get(env.command_id)
                if prior is not None and prior.outcome != REPLAYING:
                    outcomes[index] = Execution(prior, [], duplicate=True)
                    _tell(uow, [prior.request_id], prior, now, "duplicate")
                    continue
                outcome = self._apply_one(uow, env, prior, now)
                if isinstance(outcome, Execution):
                    known[env.command_id] = outcome.record
                outcomes[index] = outcome
            return Batch([outcomes[i] for i in range(len(envs))], uow.commit())

    def _apply_one(self, uow: UnitOfWork, env: Envelope, prior: CommandRecord | None,
                   now: float) -> Execution | RetryLater:
        try:
            with uow.undoable():
                effect = self._handle(env, uow, now)
                record = self._record(env, effect, prior, now)
                self._emit(uow, effect, record)
                uow.record_command(record)
                _tell_effect(uow, effect, record, now)
                return Execution(record, [])
        except CommandRefused as refusal:
            if refusal.may_succeed_later and not env.final_attempt:
                return RetryLater(refusal)
            return self._refuse(uow, env, refusal, prior, now)

    def _context(self, env: Envelope, now: float) -> Context:
        return Context(env.command_id, now, self.deadlines[0], self.deadlines[1],
                       arrived_at=env.arrived_at or now)

    def _handle(self, env: Envelope, uow: UnitOfWork, now: float) -> Effect:
        if env.refusal:
            raise InvalidCommand(env.refusal)
        model = INTERNAL_MODELS.get(env.task) if env.internal else COMMAND_MODELS.get(env.task)
        if model is None:
            raise InvalidCommand(f"unknown task {env.task!r}")
        if env.args:
            raise InvalidCommand("positional arguments are not accepted: send kwargs")
        command = parse(model, env.kwargs)
        return HANDLERS[type(command)](command, self._context(env, now), uow)

    @staticmethod
    def _record(env: Envelope, effect: Effect, prior: CommandRecord | None,
                now: float) -> CommandRecord:
        request_id = effect.request.request_id if effect.request else None
        machine = effect.machine
        return CommandRecord(
            command_id=env.command_id,
            task=env.task,
            outcome=effect.outcome,
            recorded_at=now,
            request_id=request_id or (machine.request_id if machine else None),
            machine_id=machine.machine_id if machine else None,
            correlation_id=env.correlation_id,
            version=prior.version + 1 if prior else 1,
        )

    def _emit(self, uow: UnitOfWork, effect: Effect, record: CommandRecord) -> None:
        if effect.outcome == "applied":
            requests = [(effect.request, effect.machines)] if effect.request else []
            for request, machines in requests + effect.other_requests:
                for doc in documents.request_docs(request, machines):
                    uow.emit(doc)
            changed = {m.machine_id: m for m in effect.changed_machines}
            if effect.machine is not None:
                changed[effect.machine.machine_id] = effect.machine
            for machine in changed.values():
                uow.emit(documents.machine_doc(machine))
                if machine.renamed and (named := documents.machine_name_doc(machine)):
                    uow.emit(named)
            for event in effect.events:
                uow.emit(feed_events.event_doc(event, self.retention_s))
        uow.emit(documents.command_doc(record, self.retention_s))

    def _refuse(self, uow: UnitOfWork, env: Envelope, refusal: CommandRefused,
                prior: CommandRecord | None, now: float) -> Execution:
        record = CommandRecord(
            command_id=env.command_id,
            task=env.task,
            outcome="rejected",
            recorded_at=now,
            reason=refusal.reason,
            request_id=_id_or_none(env.kwargs.get("request_id")) or _default_id(env),
            machine_id=_id_or_none(env.kwargs.get("machine_id")),
            correlation_id=env.correlation_id,
            version=prior.version + 1 if prior else 1,
        )
        uow.record_command(record)
        uow.add_dead_letter(DeadLetter(
            reason=refusal.reason, raw=env.raw(), first_at=now, last_at=now,
            command_id=env.command_id, task=env.task, queue=env.queue,
        ))
        uow.emit(documents.command_doc(record, self.retention_s))
        # The request it names, and the one of the machine it names (they may differ: a
        # report naming the wrong request is refused, and its machine's request shows it).
        machine = uow.get_machine(record.machine_id) if record.machine_id else None
        named = dict.fromkeys([record.request_id, machine.request_id if machine else None])
        _tell(uow, list(named), record, now)
        return Execution(record, [])


def _tell_effect(uow: UnitOfWork, effect: Effect, record: CommandRecord, now: float) -> None:
    """A history entry for each request the command touched, with its version after."""
    touched = ([effect.request] if effect.request else []) + [r for r, _ in effect.other_requests]
    if not touched and effect.machine is not None:  # a superseded report: its request
        _tell(uow, [effect.machine.request_id], record, now)
    for request in touched:
        _tell(uow, [request.request_id], record, now,
              version_after=request.version if effect.outcome == "applied" else None)


def _tell(uow: UnitOfWork, request_ids: list[str | None], record: CommandRecord, now: float,
          outcome: str | None = None, version_after: int | None = None) -> None:
    for request_id in request_ids:
        # Only requests that exist have a history: a refused command naming a made-up
        # request leaves none behind (its outcome and dead letter say enough).
        if request_id and uow.get_request(request_id) is not None:
            uow.add_history(HistoryEntry(
                request_id, record.command_id, record.task, outcome or record.outcome, now,
                record.reason, record.machine_id, version_after))


def parked_command_id(letter: DeadLetter) -> str | None:
    """The command id a parked message's letter names (``message:<task id>``), if valid."""
    if letter.command_id is None or not letter.command_id.startswith(PARKED_PREFIX):
        return None
    command_id = letter.command_id.removeprefix(PARKED_PREFIX)
    return command_id if is_valid_id(command_id) else None


def deadline_envelope(request_id: str) -> Envelope:
    """The command that ends a request by its deadline. Its id holds a ``#``, which no id
    off the wire may, so no producer can claim it first."""
    command_id = f"deadline#{request_id}"
    if len(command_id) > MAX_ID_LEN:
        command_id = "deadline#" + hashlib.blake2b(request_id.encode(), digest_size=24).hexdigest()
    return Envelope(task=DEADLINE_TASK, task_id=command_id, kwargs={"request_id": request_id},
                    internal=True)


def _named_ids(envs: list[Envelope]) -> tuple[set[str], set[str]]:
    """The request and machine ids a batch names (the request ids it would create too)."""
    requests = {str(r) for env in envs if is_valid_id(r := env.kwargs.get("request_id"))}
    requests |= {default_request_id(env.command_id) for env in envs
                 if env.task == CREATE_REQUEST_TASK and "request_id" not in env.kwargs}
    machines = {str(m) for env in envs if is_valid_id(m := env.kwargs.get("machine_id"))}
    for env in envs:
        listed = env.kwargs.get("machines") if env.task == RETURN_MACHINES_TASK else None
        if isinstance(listed, list):
            machines |= {str(m) for e in listed[:MAX_MACHINES_PER_REQUEST]
                         if isinstance(e, dict) and is_valid_id(m := e.get("machine_id"))}
    return requests, machines


def _default_id(env: Envelope) -> str | None:
    if env.task == CREATE_REQUEST_TASK:
        return default_request_id(env.command_id)
    if env.task == RETURN_MACHINES_TASK:
        return default_return_id(env.command_id)
    return None


def _id_or_none(value: Any) -> str | None:
    return value if is_valid_id(value) else None
