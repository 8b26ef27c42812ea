"""The Celery tasks: thin adapters. Decode, apply exactly once, project, log.

The worker runs them in batches (``entrypoints.batching``): ``run_batch`` is what a pool
process executes. Called directly (``task.apply``), a task runs as a batch of one.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from typing import Any

from celery import Task
from celery.exceptions import Reject

from commands_worker import bootstrap
from commands_worker.domain.errors import CacheUnavailable, RetryLater, StoreUnavailable
from commands_worker.entrypoints.batching import BatchedCommandTask
from commands_worker.entrypoints.celery_app import app
from commands_worker.service_layer.executor import Envelope, Execution
from commands_worker.service_layer.ports import ViewDoc
from shared import keys, names

log = logging.getLogger("hostfactory.commands")

# A machine reported before its request is applied waits this many retries (about 20 s in
# all, the first after 20 ms) for the CreateRequest to land, then is refused as
# request_not_found.
WAIT_FOR_EARLIER_RETRIES = 11

Payload = tuple[str, str, list[Any], dict[str, Any], int, "str | None"]
Action = str | tuple[str, float]


def _backoff_s(retries: int) -> float:
    return float(min(2 ** retries, 30))


def run_batch(payload: Sequence[Payload]) -> list[Action]:
    """Apply a batch in one transaction; say per message: ack, retry after N s, or requeue."""
    started = time.perf_counter()
    d = bootstrap.deps()
    envs = [Envelope(task=name, task_id=task_id, kwargs=kwargs, args=tuple(args), queue=queue,
                     final_attempt=retries >= WAIT_FOR_EARLIER_RETRIES)
            for task_id, name, args, kwargs, retries, queue in payload]
    retries_of = [p[4] for p in payload]
    try:
        batch = d.executor.execute_batch(envs)
    except StoreUnavailable as exc:
        return [_store_unavailable(d, env, retries, exc, started)
                for env, retries in zip(envs, retries_of, strict=True)]
    except Exception as exc:
        for env in envs:
            _log(env, "error", started, len(envs), reason=f"{type(exc).__name__}: {exc}")
        return ["requeue"] * len(envs)  # counted hand-backs end in dead letters
    projected = _project(d, batch.docs)
    actions: list[Action] = []
    for env, retries, outcome in zip(envs, retries_of, batch.outcomes, strict=True):
        if isinstance(outcome, RetryLater):
            _log(env, "retry", started, len(envs), reason=str(outcome), retries=retries)
            actions.append(("retry", min(0.02 * 2 ** retries, 5.0)))
        else:
            _log(env, outcome.record.outcome, started, len(envs), execution=outcome,
                 projected=projected)
            actions.append("ack")
    return actions


def _project(d: bootstrap.Deps, docs: list[ViewDoc]) -> bool:
    if not docs:
        return True
    try:
        d.projector.project(docs)
    except CacheUnavailable:
        # Committed: the outbox keeps the documents and the worker projects them later.
        return False
    d.store.projected.add(doc.outbox_id for doc in docs)
    return True


def _store_unavailable(d: bootstrap.Deps, env: Envelope, retries: int, exc: Exception,
                       started: float) -> Action:
    if retries < d.settings.max_retries:
        _log(env, "retry", started, 1, reason=str(exc), retries=retries)
        return ("retry", _backoff_s(retries))
    reason = f"store unavailable after {retries + 1} attempts: {exc}"
    # The store is down, so the letter waits in Redis until the worker can move it there.
    d.broker.lpush(keys.DEAD_LETTER_INBOX_KEY, json.dumps({
        "queue": env.queue, "reason": reason, "at": time.time(), "command": env.raw()}))
    _log(env, "dead_lettered", started, 1, reason=reason)
    return "ack"


def _log(env: Envelope, outcome: str, started: float, batch_size: int,
         execution: Execution | None = None, **fields: Any) -> None:
    record = execution.record if execution else None
    log.info("command", extra={
        "event": "command", "task": env.task, "command_id": env.command_id,
        "correlation_id": env.correlation_id, "outcome": outcome,
        "duplicate": bool(execution and execution.duplicate),
        "request_id": record.request_id if record else env.kwargs.get("request_id"),
        "machine_id": record.machine_id if record else env.kwargs.get("machine_id"),
        "reason": record.reason if record else fields.pop("reason", None),
        "batch_size": batch_size,
        "duration_ms": round((time.perf_counter() - started) * 1000, 3), **fields,
    })


def run_command(task: Task, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """A task called directly, outside the worker's batching: a batch of one."""
    request = task.request
    queue = (request.delivery_info or {}).get("routing_key")
    [action] = run_batch([(request.id, task.name, list(args), kwargs, request.retries, queue)])
    if action == "ack":
        return "done"
    if action == "requeue":
        raise Reject("could not apply", requeue=True)
    raise task.retry(countdown=action[1])


@app.task(name=names.CREATE_REQUEST_TASK, bind=True,  # type: ignore[untyped-decorator]
          base=BatchedCommandTask)
def create_request(self: Task, *args: Any, **kwargs: Any) -> str:
    return run_command(self, args, kwargs)


@app.task(name=names.UPDATE_MACHINE_STATUS_TASK, bind=True,  # type: ignore[untyped-decorator]
          base=BatchedCommandTask)
def update_machine_status(self: Task, *args: Any, **kwargs: Any) -> str:
    return run_command(self, args, kwargs)
