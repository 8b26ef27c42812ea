"""What a pool process runs for a batch of messages: apply, project, and say per message what
the consumer does with it. No Celery here: the consumer side (``batching``) hands over plain
``BatchItem`` tuples and gets ``Verdict`` tuples back, across the pool's process boundary.

Two retry budgets, counted apart in the message's own headers: ``waits`` for a machine report
that arrived before its request (it may apply once the request is in), ``outages`` for a store
that did not answer. A report that waited for its request still rides out a store outage with
its full budget.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Sequence
from typing import Any, Final

from commands_worker import bootstrap
from commands_worker.adapters import metrics
from commands_worker.adapters.broker import dead_letter_inbox
from commands_worker.domain import errors
from commands_worker.entrypoints.items import (
    ACK,
    REQUEUE,
    Action,
    BatchItem,
    Verdict,
)
from commands_worker.service_layer.executor import Envelope, Execution
from commands_worker.service_layer.ports import ViewDoc

log = logging.getLogger("hostfactory.commands")

# A machine reported before its request is applied waits this many retries (about 20 s in
# all, the first after 20 ms) for the CreateRequest to land, then is refused as
# request_not_found.
MAX_WAITS: Final = 11
WAIT_FIRST_S: Final = 0.02
WAIT_MOST_S: Final = 5.0
OUTAGE_MOST_S: Final = 30.0


def jittered(base_s: float, most_s: float) -> float:
    """Exponential backoff with ±25 % jitter, so retries of one outage do not arrive as one."""
    return min(base_s, most_s) * random.uniform(0.75, 1.25)


def run_batch(items: Sequence[BatchItem]) -> list[Verdict]:
    """Apply a batch in one transaction; say per message: ack, retry after N s, or requeue."""
    started = time.perf_counter()
    try:
        d = bootstrap.deps()
    except errors.StoreUnavailable as exc:
        # This process never opened the store (one started during an outage): the retry of
        # a store outage, not a batch lost (its hand-backs would count towards poison).
        _say_unavailable(exc)
        metrics.STORE_RETRIES.inc(len(items))
        return [_outage_retry(i) for i in items]
    envs = [Envelope(task=i.task, task_id=i.command_id, kwargs=i.kwargs, args=tuple(i.args),
                     queue=i.queue, final_attempt=i.waits >= MAX_WAITS, refusal=i.refusal,
                     arrived_at=i.arrived_at)
            for i in items]
    return _run(d, envs, list(items), started)


def _run(d: bootstrap.Deps, envs: list[Envelope], items: list[BatchItem],
         started: float) -> list[Verdict]:
    """A failure no command should cause is isolated: the batch is split in halves and each
    run again, down to the one command that causes it, which is refused on its own."""
    try:
        applying = time.perf_counter()
        batch = d.executor.execute_batch(envs)
        committed = time.perf_counter()
        metrics.APPLY_SECONDS.observe(committed - applying)
        metrics.BATCH_SIZE.observe(len(envs))
    except errors.StoreUnavailable as exc:
        _say_unavailable(exc)
        return [_store_unavailable(d, env, item, exc, started)
                for env, item in zip(envs, items, strict=True)]
    except errors.ConcurrentUpdate as exc:  # lost every race it ran: a load to wait out, no fault
        for env in envs:
            _log(env, "requeued", started, len(envs), reason=str(exc))
        return [REQUEUE] * len(envs)
    except Exception as exc:
        if len(envs) > 1:
            half = len(envs) // 2
            return (_run(d, envs[:half], items[:half], started)
                    + _run(d, envs[half:], items[half:], started))
        return [_unapplicable(d, envs[0], exc, started)]
    projected = _project(d, batch.docs)
    if projected and batch.docs:
        metrics.PROJECTION_LAG.observe(time.perf_counter() - committed)
    verdicts = []
    for env, item, outcome in zip(envs, items, batch.outcomes, strict=True):
        if isinstance(outcome, errors.RetryLater):
            _log(env, "retry", started, len(envs), reason=str(outcome), waits=item.waits)
            verdicts.append(Verdict(Action.RETRY, jittered(WAIT_FIRST_S * 2 ** item.waits,
                                                           WAIT_MOST_S), "waits"))
        else:
            _log(env, outcome.record.outcome, started, len(envs), execution=outcome,
                 projected=projected)
            verdicts.append(ACK)
    return verdicts


def _unapplicable(d: bootstrap.Deps, env: Envelope, exc: Exception, started: float) -> Verdict:
    """One command fails in a way validation did not foresee: it is refused with what
    happened as its reason (a dead letter an operator can replay once it is understood).
    Only if even the refusal cannot be written is it handed back, counted as poison."""
    reason = f"could not be applied: {type(exc).__name__}: {str(exc)[:500]}"
    log.error("command could not be applied", exc_info=exc,
              extra={"event": "unapplicable", "command_id": env.command_id})
    try:
        refused = d.executor.execute_batch([env.refused(reason)])
    except Exception:
        log.exception("refusal could not be recorded", extra={"command_id": env.command_id})
        return REQUEUE
    _project(d, refused.docs)
    _log(env, "rejected", started, 1, reason=reason)
    return ACK


def _project(d: bootstrap.Deps, docs: list[ViewDoc]) -> bool:
    if not docs:
        return True
    try:
        d.projector.project(docs)
    except errors.CacheUnavailable:
        # Committed: the outbox keeps the documents and the worker projects them later.
        return False
    d.store.projected.add(doc.outbox_id for doc in docs)
    return True


_unavailable_said_at = [0.0]


def _say_unavailable(exc: Exception) -> None:
    """An outage (a failover under way, say) in the log at warning level, once every few
    seconds rather than once per command; each command's retry is logged at info."""
    now = time.monotonic()
    if now - _unavailable_said_at[0] > 5.0:
        _unavailable_said_at[0] = now
        log.warning("store unavailable; its commands are retried with backoff", extra={
            "event": "store_unavailable", "error": str(exc)[:300]})


def _outage_retry(item: BatchItem) -> Verdict:
    """Send again after a backoff that doubles with each outage met, one outage spent."""
    return Verdict(Action.RETRY, jittered(2.0 ** item.outages, OUTAGE_MOST_S), "outages")


def _store_unavailable(d: bootstrap.Deps, env: Envelope, item: BatchItem, exc: Exception,
                       started: float) -> Verdict:
    if item.outages < d.settings.max_retries:
        metrics.STORE_RETRIES.inc()
        _log(env, "retry", started, 1, reason=str(exc), outages=item.outages)
        return _outage_retry(item)
    reason = f"store unavailable after {item.outages + 1} attempts: {exc}"
    # The store is down, so the letter waits in Redis until the worker can move it there.
    dead_letter_inbox.park_command(d.inbox, env.raw(), env.queue, reason)
    _log(env, "dead_lettered", started, 1, reason=reason)
    return ACK


def _log(env: Envelope, outcome: str, started: float, batch_size: int,
         execution: Execution | None = None, **fields: Any) -> None:
    record = execution.record if execution else None
    metrics.count_command(env.task, "duplicate" if execution and execution.duplicate
                          else outcome)
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
