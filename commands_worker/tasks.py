"""The Celery tasks: thin adapters. Decode, apply exactly once, project, log."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from celery import Task
from celery.exceptions import Reject

from commands_worker import bootstrap
from commands_worker.app import app
from commands_worker.errors import CacheUnavailable, RetryLater, StoreUnavailable
from commands_worker.service import Envelope, Execution
from shared import keys, names

log = logging.getLogger("hostfactory.commands")


# A machine reported before its request is applied waits this many retries (about 25 s in
# all) for the CreateRequest to land before it is refused as request_not_found.
WAIT_FOR_EARLIER_RETRIES = 8


def _backoff_s(retries: int) -> float:
    return float(min(2 ** retries, 30))


def run_command(task: Task, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    started = time.perf_counter()
    request = task.request
    d = bootstrap.deps()
    env = Envelope(task=task.name, task_id=request.id, kwargs=kwargs, args=tuple(args),
                   queue=(request.delivery_info or {}).get("routing_key"),
                   final_attempt=request.retries >= WAIT_FOR_EARLIER_RETRIES)
    try:
        execution = d.executor.execute(env)
    except RetryLater as exc:
        _log(env, "retry", started, reason=str(exc), retries=request.retries)
        raise task.retry(exc=exc, countdown=0.2 * 2 ** min(request.retries, 5)) from exc
    except StoreUnavailable as exc:
        return _store_unavailable(task, env, exc, started)
    except Exception as exc:
        _log(env, "error", started, reason=f"{type(exc).__name__}: {exc}")
        # Back to the queue; after MAX_REDELIVERIES hand-backs it becomes a dead letter.
        raise Reject(str(exc), requeue=True) from exc
    projected = _project(d, execution)
    _log(env, execution.record.outcome, started, execution=execution, projected=projected)
    return {"command_id": env.command_id, "outcome": execution.record.outcome}


def _project(d: bootstrap.Deps, execution: Execution) -> bool:
    if not execution.docs:
        return True
    try:
        d.projector.project(execution.docs)
    except CacheUnavailable:
        # Committed: the outbox keeps the documents and the worker projects them later.
        return False
    d.store.projected.add(doc.outbox_id for doc in execution.docs)
    return True


def _store_unavailable(task: Task, env: Envelope, exc: StoreUnavailable,
                       started: float) -> dict[str, Any]:
    retries = task.request.retries
    if retries < bootstrap.deps().settings.max_retries:
        _log(env, "retry", started, reason=str(exc), retries=retries)
        raise task.retry(exc=exc, countdown=_backoff_s(retries))
    reason = f"store unavailable after {retries + 1} attempts: {exc}"
    # The store is down, so the letter waits in Redis until the worker can move it there.
    bootstrap.deps().broker.lpush(keys.DEAD_LETTER_INBOX_KEY, json.dumps({
        "queue": env.queue, "reason": reason, "at": time.time(), "command": env.raw()}))
    _log(env, "dead_lettered", started, reason=reason)
    return {"command_id": env.command_id, "outcome": "dead_lettered"}


def _log(env: Envelope, outcome: str, started: float, execution: Execution | None = None,
         **fields: Any) -> None:
    record = execution.record if execution else None
    log.info("command", extra={
        "event": "command", "task": env.task, "command_id": env.command_id,
        "correlation_id": env.correlation_id, "outcome": outcome,
        "duplicate": bool(execution and execution.duplicate),
        "request_id": record.request_id if record else env.kwargs.get("request_id"),
        "machine_id": record.machine_id if record else env.kwargs.get("machine_id"),
        "reason": record.reason if record else fields.pop("reason", None),
        "duration_ms": round((time.perf_counter() - started) * 1000, 3), **fields,
    })


@app.task(name=names.CREATE_REQUEST_TASK, bind=True)  # type: ignore[untyped-decorator]
def create_request(self: Task, *args: Any, **kwargs: Any) -> dict[str, Any]:
    return run_command(self, args, kwargs)


@app.task(name=names.UPDATE_MACHINE_STATUS_TASK, bind=True)  # type: ignore[untyped-decorator]
def update_machine_status(self: Task, *args: Any, **kwargs: Any) -> dict[str, Any]:
    return run_command(self, args, kwargs)
