"""The Celery tasks: thin adapters. The worker applies their messages in batches
(``batching``, ``batch_runner``); called directly (``task.apply``), a task runs as a batch of
one through the same runner."""

from __future__ import annotations

from typing import Any

from celery import Task
from celery.exceptions import Reject

from commands_worker.entrypoints.admission import admit
from commands_worker.entrypoints.batch_runner import run_batch
from commands_worker.entrypoints.batching import BatchedCommandTask
from commands_worker.entrypoints.celery_app import app
from commands_worker.entrypoints.items import OUTAGES_HEADER, WAITS_HEADER, Action
from shared import names


def run_command(task: Task, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """A task called directly, outside the worker's batching: a batch of one."""
    request = task.request
    headers = {"id": request.id, "task": task.name,
               WAITS_HEADER: getattr(request, WAITS_HEADER, 0),
               OUTAGES_HEADER: getattr(request, OUTAGES_HEADER, 0)}
    queue = (request.delivery_info or {}).get("routing_key")
    [verdict] = run_batch([admit(headers, lambda: (list(args), kwargs, {}), queue)])
    if verdict.action is Action.ACK:
        return "done"
    if verdict.action is Action.REQUEUE:
        raise Reject("could not apply", requeue=True)
    raise task.retry(countdown=verdict.delay_s)


@app.task(name=names.CREATE_REQUEST_TASK, bind=True,  # type: ignore[untyped-decorator]
          base=BatchedCommandTask)
def create_request(self: Task, *args: Any, **kwargs: Any) -> str:
    return run_command(self, args, kwargs)


@app.task(name=names.UPDATE_MACHINE_STATUS_TASK, bind=True,  # type: ignore[untyped-decorator]
          base=BatchedCommandTask)
def update_machine_status(self: Task, *args: Any, **kwargs: Any) -> str:
    return run_command(self, args, kwargs)


@app.task(name=names.RETURN_MACHINES_TASK, bind=True,  # type: ignore[untyped-decorator]
          base=BatchedCommandTask)
def return_machines(self: Task, *args: Any, **kwargs: Any) -> str:
    return run_command(self, args, kwargs)


@app.task(name=names.REPORT_LAUNCH_FAILURE_TASK, bind=True,  # type: ignore[untyped-decorator]
          base=BatchedCommandTask)
def report_launch_failure(self: Task, *args: Any, **kwargs: Any) -> str:
    return run_command(self, args, kwargs)
