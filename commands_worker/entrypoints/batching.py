"""Commands applied in batches, inside a plain Celery worker.

Celery hands each message to a pool process on its own: about a millisecond of overhead per
message before any work, and one store transaction per command. Here the consumer (the
worker's main process) gathers the messages of both command tasks for a few milliseconds (or
until ``FLUSH_EVERY``) and sends them to a pool process together: one store transaction with
a savepoint per command, one Redis pipeline for every view, one pipeline for every
acknowledgement. No guarantee is weakened: a message is acknowledged only after its command is
committed and projected; a pool process that dies hands its whole batch back (counted, so a
batch that keeps killing workers ends in dead letters); messages held here are recorded as
unacknowledged by the transport and come back if the worker dies.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any, Final

from celery import Task

log = logging.getLogger("hostfactory.worker")

FLUSH_EVERY: Final = 64
FLUSH_INTERVAL_S: Final = 0.004


@dataclass
class Item:
    message: Any
    task_id: str
    name: str
    args: list[Any]
    kwargs: dict[str, Any]
    retries: int
    queue: str | None

    def payload(self) -> tuple[str, str, list[Any], dict[str, Any], int, str | None]:
        return (self.task_id, self.name, self.args, self.kwargs, self.retries, self.queue)


class Batcher:
    """One per consumer: gathers messages of every batched task and flushes them."""

    def __init__(self, app: Any, consumer: Any) -> None:
        self.app = app
        self.consumer = consumer
        self.connection = consumer.connection
        self.buffer: list[Item] = []
        self.tref: Any = None
        self.flush_due = 0.0
        # Batches out at the pool at once: no more than it has processes. While they are
        # busy, messages gather into the next batch, so batches grow with the load.
        self.in_flight = 0
        self.slots = max(1, int(getattr(consumer.pool, "num_processes", 1) or 1))

    def on_message(self, message: Any, body: Any, ack: Any, reject: Any, callbacks: Any,
                   **kwargs: Any) -> None:
        # Bad content (a pickle, broken JSON) raises here; Celery's consumer then hands the
        # message to our Consumer, which dead-letters it.
        args, task_kwargs, _embed = message.decode()
        headers = message.headers
        item = Item(message, headers["id"], headers["task"], list(args or []),
                    dict(task_kwargs or {}), int(headers.get("retries") or 0),
                    (message.delivery_info or {}).get("routing_key"))
        eta = _epoch(headers.get("eta"))
        if eta is not None and eta > time.time():
            # A retry with a countdown: held (and its lease renewed) until due. The timer
            # runs on the monotonic clock, so it is given a delay, not a wall-clock time.
            self.consumer.qos.increment_eventually()
            self.consumer.timer.call_after(eta - time.time(), partial(self._due, item))
            return
        self._add(item)

    def _due(self, item: Item) -> None:
        self.consumer.qos.decrement_eventually()
        self._add(item)

    def _add(self, item: Item) -> None:
        self.buffer.append(item)
        overdue = self.tref is not None and time.monotonic() > self.flush_due + 0.5
        if len(self.buffer) >= FLUSH_EVERY or overdue:  # overdue: the timer was lost
            self.flush()
        elif self.tref is None:
            self.flush_due = time.monotonic() + FLUSH_INTERVAL_S
            self.tref = self.consumer.timer.call_after(FLUSH_INTERVAL_S, self.flush)

    def flush(self) -> None:
        if self.tref is not None:
            self.tref.cancel()
            self.tref = None
        if not self.buffer or (self.in_flight >= self.slots and len(self.buffer) < FLUSH_EVERY):
            return  # a finishing batch flushes what gathered meanwhile
        items, self.buffer = self.buffer, []
        from commands_worker.entrypoints.tasks import run_batch

        self.in_flight += 1
        self.consumer.pool.apply_async(
            run_batch, args=([item.payload() for item in items],),
            callback=partial(self._done, items), error_callback=partial(self._failed, items))

    def _done(self, items: list[Item], actions: list[Any]) -> None:
        self.in_flight -= 1
        try:
            self._settle(items, actions)
        finally:
            self.flush()

    def _settle(self, items: list[Item], actions: list[Any]) -> None:
        settled = []
        for item, action in zip(items, actions, strict=True):
            if action == "ack":
                settled.append(item)
            elif action[0] == "retry":
                self.app.send_task(item.name, args=item.args, kwargs=item.kwargs,
                                   task_id=item.task_id, countdown=action[1],
                                   retries=item.retries + 1, queue=item.queue)
                settled.append(item)
            else:
                item.message.reject(requeue=True)
        _ack_all(settled)

    def _failed(self, items: list[Item], exc: BaseException) -> None:
        self.in_flight -= 1
        self.flush()
        log.error("batch lost; its messages go back to their queues",
                  extra={"event": "batch_lost", "size": len(items), "error": repr(exc)})
        for item in items:
            item.message.reject(requeue=True)


def _ack_all(items: list[Item]) -> None:
    if not items:
        return
    qos = items[0].message.channel.qos
    if hasattr(qos, "ack_many"):
        qos.ack_many([item.message.delivery_tag for item in items])
        for item in items:
            item.message._state = "ACK"  # what Message.ack() would have recorded
        return
    for item in items:
        item.message.ack()


def _epoch(eta: Any) -> float | None:
    if not eta:
        return None
    return datetime.fromisoformat(str(eta)).timestamp()


def strategy(task: Any, app: Any, consumer: Any, **kwargs: Any) -> Any:
    """Called for each batched task whenever the consumer (re)connects: one batcher per
    connection. What an old batcher still held is unacknowledged in Redis and comes back."""
    batcher = getattr(consumer, "_hf_batcher", None)
    if batcher is None or batcher.connection is not consumer.connection:
        if batcher is not None and batcher.tref is not None:
            batcher.tref.cancel()
        batcher = consumer._hf_batcher = Batcher(app, consumer)
    return batcher.on_message


class BatchedCommandTask(Task):  # type: ignore[misc]
    """A command task whose messages the worker applies in batches (see module doc)."""

    Strategy = "commands_worker.entrypoints.batching:strategy"
