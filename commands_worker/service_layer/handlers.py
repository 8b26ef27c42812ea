"""Command handlers: plain functions over a unit of work. No Celery, no Redis.

Each loads what it needs, asks the domain what follows, saves with the version it loaded and
says what changed. A refusal is raised before anything is written.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from commands_worker.domain.errors import (
    InvalidCommand,
    MachineRequestMismatch,
    MaxNumberExceeded,
    RequestConflict,
    RequestNotFound,
    TemplateNotFound,
)
from commands_worker.domain.model import Machine, Request
from commands_worker.service_layer.ports import Effect, UnitOfWork
from shared.commands import Command, CreateRequest, UpdateMachineStatus
from shared.ids import MAX_ID_LEN, default_request_id, is_valid_id


@dataclass(frozen=True)
class Context:
    command_id: str
    now: float


def request_id_for(cmd: CreateRequest, command_id: str) -> str:
    return cmd.request_id or default_request_id(command_id)


def create_request(cmd: CreateRequest, ctx: Context, uow: UnitOfWork) -> Effect:
    template = uow.get_template(cmd.template_id)
    if template is None:
        raise TemplateNotFound(f"no template {cmd.template_id!r}")
    if template.exceeded_by(cmd.max_number):
        raise MaxNumberExceeded(
            f"max_number {cmd.max_number} exceeds template {template.template_id!r}'s "
            f"maxNumber {template.max_number}"
        )
    request_id = request_id_for(cmd, ctx.command_id)
    if not is_valid_id(request_id):
        raise InvalidCommand(f"the default request id {request_id[:40]!r}… would be longer "
                             f"than {MAX_ID_LEN} characters: send request_id")
    if uow.get_request(request_id) is not None:
        raise RequestConflict(f"request {request_id!r} was already created by another command")
    request = Request(
        request_id=request_id,
        template_id=template.template_id,
        max_number=cmd.max_number,
        attributes=dict(cmd.attributes or {}),
        status="pending",
        created_at=ctx.now,
        updated_at=ctx.now,
        version=1,
    )
    uow.add_request(request)
    return Effect("applied", request=request)


def _details(cmd: UpdateMachineStatus) -> dict[str, Any]:
    return cmd.metadata.model_dump(exclude_none=True) if cmd.metadata else {}


def update_machine_status(cmd: UpdateMachineStatus, ctx: Context, uow: UnitOfWork) -> Effect:
    observed_at = cmd.observed_epoch() or ctx.now
    machine = uow.get_machine(cmd.machine_id)
    if machine is None:
        return _first_report(cmd, ctx, uow, observed_at)
    if cmd.request_id is not None and cmd.request_id != machine.request_id:
        raise MachineRequestMismatch(
            f"machine {machine.machine_id} belongs to request {machine.request_id}, "
            f"not {cmd.request_id}"
        )
    if machine.is_stale(observed_at):
        return Effect("superseded", machine=machine)
    loaded = machine.version
    machine.apply_report(cmd.status, _details(cmd), observed_at, ctx.now)
    uow.save_machine(machine, loaded)
    request = uow.get_request(machine.request_id)
    if request is None:  # the store's foreign key makes this unreachable
        raise RequestNotFound(f"request {machine.request_id!r} of machine is missing")
    machines = [m if m.machine_id != machine.machine_id else machine
                for m in uow.machines_of(request.request_id)]
    _machines_changed(uow, request, machines, ctx.now)
    return Effect("applied", request=request, machines=machines, machine=machine)


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
    machines = uow.machines_of(request.request_id)
    request.admit_machine(len(machines))
    machine = Machine(
        machine_id=cmd.machine_id,
        request_id=request.request_id,
        status=cmd.status,
        observed_at=observed_at,
        created_at=ctx.now,
        updated_at=ctx.now,
    )
    machine.apply_report(cmd.status, _details(cmd), observed_at, ctx.now)
    uow.add_machine(machine)
    machines.append(machine)
    _machines_changed(uow, request, machines, ctx.now)
    return Effect("applied", request=request, machines=machines, machine=machine)


def _machines_changed(uow: UnitOfWork, request: Request, machines: list[Machine],
                      now: float) -> None:
    loaded = request.version
    request.on_machines_changed(machines, now)
    uow.save_request(request, loaded)


Handler = Callable[[Any, Context, UnitOfWork], Effect]

# Command type -> its handler. Which model a wire task name decodes to is the contract's
# business (shared.commands.COMMAND_MODELS), not the handlers'.
HANDLERS: dict[type[Command], Handler] = {
    CreateRequest: create_request,
    UpdateMachineStatus: update_machine_status,
}
