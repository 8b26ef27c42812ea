"""Command handlers: plain functions over a unit of work. No Celery, no Redis.

Each loads what it needs, asks the domain what follows, saves with the version it loaded and
says what changed. A refusal is raised before anything is written.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from commands_worker.domain.errors import (
    InvalidCommand,
    MachineRequestMismatch,
    MaxNumberExceeded,
    RequestConflict,
    RequestNeverPublished,
    RequestNotFound,
    TemplateNotFound,
)
from commands_worker.domain.model import Machine, Request, reported_units, request_status
from commands_worker.service_layer import feed_events
from commands_worker.service_layer.ports import Effect, FeedEvent, UnitOfWork
from shared import hostfactory as hf
from shared.commands import (
    Command,
    CreateRequest,
    ReportLaunchFailure,
    ReturnMachines,
    UpdateMachineStatus,
)
from shared.ids import MAX_ID_LEN, default_request_id, default_return_id, is_valid_id

DEFAULT_TIMEOUT_S: Final = hf.DEFAULT_DEADLINE_S


@dataclass(frozen=True)
class Context:
    command_id: str
    now: float
    # How long an acquire / a return request may take before it ends by its deadline.
    request_timeout_s: float = DEFAULT_TIMEOUT_S
    return_timeout_s: float = DEFAULT_TIMEOUT_S
    # When the worker first took the command (kept across retries; 0: now).
    arrived_at: float = 0.0

    @property
    def reported_at(self) -> float:
        """The time of a machine report that carries no observed_at: its arrival, so that
        reports that waited (for their request, or out an outage) keep their order."""
        return self.arrived_at or self.now


class PassDeadline(Command):
    """The worker's own command: a request's deadline passed. Never accepted off the wire
    (its task name is not the contract's); its id, ``deadline#<request id>``, is one no
    producer can send, so it applies once whichever worker notices first."""

    request_id: str


def create_request(cmd: CreateRequest, ctx: Context, uow: UnitOfWork) -> Effect:
    template = uow.get_template(cmd.template_id)
    if template is None:
        raise TemplateNotFound(f"no template {cmd.template_id!r}")
    if template.exceeded_by(cmd.max_number):
        raise MaxNumberExceeded(
            f"max_number {cmd.max_number} exceeds template {template.template_id!r}'s "
            f"maxNumber {template.max_number}"
        )
    request_id = _new_request_id(uow, cmd.request_id or default_request_id(ctx.command_id))
    request = Request(
        request_id=request_id,
        template_id=template.template_id,
        max_number=cmd.max_number,
        attributes=dict(cmd.attributes or {}),
        status="pending",
        created_at=ctx.now,
        updated_at=ctx.now,
        version=1,
        deadline_at=ctx.now + ctx.request_timeout_s,
    )
    uow.add_request(request)
    return Effect("applied", request=request, events=[feed_events.acquire_event(request, template)])


def _new_request_id(uow: UnitOfWork, request_id: str) -> str:
    if not is_valid_id(request_id):
        raise InvalidCommand(f"the default request id {request_id[:40]!r}… would be longer "
                             f"than {MAX_ID_LEN} characters: send request_id")
    if uow.get_request(request_id) is not None:
        raise RequestConflict(f"request {request_id!r} was already created by another command")
    return request_id


def _details(cmd: UpdateMachineStatus) -> dict[str, Any]:
    return cmd.metadata.model_dump(exclude_none=True) if cmd.metadata else {}


def update_machine_status(cmd: UpdateMachineStatus, ctx: Context, uow: UnitOfWork) -> Effect:
    observed_at = cmd.observed_epoch() or ctx.reported_at
    machine = uow.get_machine(cmd.machine_id)
    if machine is None:
        return _first_report(cmd, ctx, uow, observed_at)
    if cmd.request_id not in (None, machine.request_id, machine.return_request_id):
        raise MachineRequestMismatch(
            f"machine {machine.machine_id} belongs to request {machine.request_id}, "
            f"not {cmd.request_id}"
        )
    if machine.is_stale(observed_at):
        return Effect("superseded", machine=machine)
    loaded = machine.version
    machine.apply_report(cmd.status, _details(cmd), observed_at, ctx.now)
    uow.save_machine(machine, loaded)
    request, machines = _refresh(uow, machine.request_id, [machine], ctx.now)
    also = ([_refresh(uow, machine.return_request_id, [machine], ctx.now)]
            if machine.return_request_id else [])
    return Effect("applied", request=request, machines=machines, machine=machine,
                  other_requests=also)


def _refresh(uow: UnitOfWork, request_id: str, changed: list[Machine],
             now: float) -> tuple[Request, list[Machine]]:
    """A request some of whose machines changed: its status follows, its version grows."""
    request = uow.get_request(request_id)
    if request is None:  # the store's foreign key makes this unreachable
        raise RequestNotFound(f"request {request_id!r} of a machine is missing")
    fresh = {m.machine_id: m for m in changed}
    machines = [fresh.get(m.machine_id, m) for m in uow.machines_of(request_id)]
    _machines_changed(uow, request, machines, now)
    return request, machines


def _first_report(
    cmd: UpdateMachineStatus, ctx: Context, uow: UnitOfWork, observed_at: float
) -> Effect:
    if cmd.request_id is None:
        raise InvalidCommand(
            f"request_id is required the first time machine {cmd.machine_id!r} is reported"
        )
    request = uow.get_request(cmd.request_id)
    if request is None:
        raise RequestNotFound(f"no request {cmd.request_id!r}")
    if request.kind != hf.ACQUIRE:
        raise InvalidCommand(f"{cmd.request_id!r} is a return request: a machine is first "
                             f"reported for the request that acquired it")
    machines = uow.machines_of(request.request_id)
    request.admit_machine(reported_units(machines))
    machine = Machine(
        machine_id=cmd.machine_id,
        request_id=request.request_id,
        status=cmd.status,
        observed_at=observed_at,
        created_at=ctx.now,
        updated_at=ctx.now,
    )
    machine.late = request.is_late(observed_at, reported_units(machines))
    machine.apply_report(cmd.status, _details(cmd), observed_at, ctx.now)
    uow.add_machine(machine)
    machines.append(machine)
    _machines_changed(uow, request, machines, ctx.now)
    reason = REASON_LAUNCHED_LATE if not request.unfulfilled else REASON_NOT_EXPECTED
    return Effect("applied", request=request, machines=machines, machine=machine,
                  events=releases([machine], reason))


REASON_LAUNCHED_LATE: Final = "launched after its request's deadline"
REASON_NOT_EXPECTED: Final = ("launched after its request ended, or beyond the machines "
                              "it still waited for")
REASON_NOT_UP: Final = "not up by its request's deadline"
# A release published again (a rebuild): the store keeps that a machine is late, not why.
REASON_LATE: Final = "late: not up by its request's deadline, or beyond what it waited for"


def releases(machines: list[Machine], reason: str) -> list[FeedEvent]:
    """Late machines still there: the provider is to terminate them."""
    return [feed_events.release_event(m, reason) for m in machines if m.to_release]


def _machines_changed(uow: UnitOfWork, request: Request, machines: list[Machine],
                      now: float) -> None:
    loaded = request.version
    request.on_machines_changed(machines, now)
    uow.save_request(request, loaded)


def return_machines(cmd: ReturnMachines, ctx: Context, uow: UnitOfWork) -> Effect:
    """A return request for the machines listed: each found by id, else by host name, and
    linked to this request unless another open return request has it already. The listed
    machines nobody knows count as returned."""
    request_id = _new_request_id(uow, cmd.request_id or default_return_id(ctx.command_id))
    found: dict[str, Machine] = {}
    unknown: list[dict[str, Any]] = []
    for entry in cmd.machines:
        machine = (uow.get_machine(entry.machine_id) if entry.machine_id else None) or \
            uow.machine_named(entry.name)
        listed = {"name": entry.name, "machine_id": entry.machine_id}
        if machine is None:
            unknown.append({**listed, "message": "unknown to the provider: nothing to return"})
        elif (other := _open_return(uow, machine)) is not None:
            unknown.append({**listed, "message": f"already being returned by {other}"})
        else:
            found.setdefault(machine.machine_id, machine)
    request = Request(
        request_id=request_id, template_id="", max_number=len(found) + len(unknown),
        attributes={}, status="pending", created_at=ctx.now, updated_at=ctx.now, version=1,
        kind=hf.RETURN, deadline_at=ctx.now + ctx.return_timeout_s, unknown_machines=unknown)
    machines = sorted(found.values(), key=lambda m: m.machine_id)
    for machine in machines:
        loaded = machine.version
        machine.return_request_id = request_id
        machine.changed(ctx.now)
        uow.save_machine(machine, loaded)
    request.status = request_status_of(request, machines)
    uow.add_request(request)
    acquired = sorted({m.request_id for m in machines})
    also = [_refresh(uow, rid, machines, ctx.now) for rid in acquired]
    events = [feed_events.return_event(request, machines)] if machines else []
    return Effect("applied", request=request, machines=machines, changed_machines=machines,
                  other_requests=also, events=events)


def report_launch_failure(cmd: ReportLaunchFailure, ctx: Context, uow: UnitOfWork) -> Effect:
    """The provider says ``count`` machines of an acquire request will not come: they count
    failed, so the request can end now rather than at its deadline. A machine reported for
    it later than that, beyond what it still waits for, is recorded late and released."""
    request = uow.get_request(cmd.request_id)
    if request is None:
        raise RequestNeverPublished(f"no request {cmd.request_id!r}: a launch failure names "
                                    "a request from the provider feed")
    if request.kind != hf.ACQUIRE:
        raise InvalidCommand(f"{cmd.request_id!r} is a return request: only an acquire "
                             f"request's machines can fail to launch")
    machines = uow.machines_of(request.request_id)
    reported = reported_units(machines)
    room = request.room_for_failures(reported)
    if cmd.count > room:
        raise InvalidCommand(
            f"request {request.request_id} asked for {request.max_number} machine(s), "
            f"{reported} reported and {request.unfulfilled} said not to come: "
            f"{cmd.count} more cannot fail to launch (at most {max(room, 0)})")
    loaded = request.version
    request.fail_launch(cmd.count, cmd.message, machines, ctx.now)
    uow.save_request(request, loaded)
    return Effect("applied", request=request, machines=machines)


def _open_return(uow: UnitOfWork, machine: Machine) -> str | None:
    if machine.return_request_id is None:
        return None
    other = uow.get_request(machine.return_request_id)
    return None if other is None or other.is_final else other.request_id


def request_status_of(request: Request, machines: list[Machine]) -> str:
    return request_status(request.status, request.max_number, machines, request.kind,
                          len(request.unknown_machines), request.unfulfilled)


def pass_deadline(cmd: PassDeadline, ctx: Context, uow: UnitOfWork) -> Effect:
    """End a request by its deadline, once: a request that ended by itself meanwhile, or
    whose deadline was moved, is left as it is (``superseded``)."""
    request = uow.get_request(cmd.request_id)
    if request is None:
        raise RequestNotFound(f"no request {cmd.request_id!r}")
    if request.is_final or request.deadline_at is None or request.deadline_at > ctx.now:
        return Effect("superseded", request=request)
    machines = uow.machines_of(request.request_id)
    loaded_request = request.version
    touched = request.expire(machines, ctx.now)
    for machine in touched:
        uow.save_machine(machine, machine.version - 1)
    uow.save_request(request, loaded_request)
    return Effect("applied", request=request, machines=machines, changed_machines=touched,
                  events=releases(touched, REASON_NOT_UP))


Handler = Callable[[Any, Context, UnitOfWork], Effect]

# Command type -> its handler. Which model a wire task name decodes to is the contract's
# business (shared.commands.COMMAND_MODELS), not the handlers'.
HANDLERS: dict[type[Command], Handler] = {
    CreateRequest: create_request,
    UpdateMachineStatus: update_machine_status,
    ReturnMachines: return_machines,
    ReportLaunchFailure: report_launch_failure,
    PassDeadline: pass_deadline,
}
