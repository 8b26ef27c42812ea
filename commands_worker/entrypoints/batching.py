"""Commands applied in batches, inside a plain Celery worker.

Celery hands each message to a pool process on its own: about a millisecond of overhead per
message before any work, and one store transaction per command. Here the consumer (the
worker's main process) gathers the messages of both command tasks that one read brings, and
more while every pool process is busy (up to ``FLUSH_EVERY``), and sends them to a pool process
together (``batch_runner``): one store
transaction in which each command is undone alone if refused, one Redis pipeline for every
view, one pipeline for every acknowledgement. No guarantee is weakened: a message is
acknowledged only after its command is committed and projected; a pool process that dies
hands its whole batch back (counted, so a batch that keeps killing workers ends in dead
letters); messages held here are recorded as unacknowledged by the transport and come back
if the worker dies.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any, Final

from celery import Task

from commands_worker.adapters import metrics
from commands_worker.adapters.broker.consumer import forget, park_and_settle
from commands_worker.entrypoints.admission import Unadmittable, admit
from commands_worker.entrypoints.batch_runner import run_batch
from commands_worker.entrypoints.items import Action, BatchItem, Verdict, budget_headers
from shared.brokers import CONFIRM_TIMEOUT_S

log = logging.getLogger("hostfactory.worker")

FLUSH_EVERY: Final = 64
# How long a message waits for company when a pool process is free: none, past the event
# loop's turn (the messages of one read go together). Batches grow with the load anyway:
# while every process is busy, messages gather. 4 ms here was a third of the projection lag
# at 150 commands/s (bench.lag: p50 15.5 -> 10.0 ms); 1 ms was still ~1 ms of it.
FLUSH_INTERVAL_S: Final = 0.0


@dataclass
class Held:
    """A message and what the pool will be handed for it."""

    message: Any
    item: BatchItem


class Batcher:
    """One per consumer: gathers messages of every batched task and flushes them."""

    def __init__(self, app: Any, consumer: Any) -> None:
        self.app = app
        self.consumer = consumer
        self.connection = consumer.connection
        self.buffer: list[Held] = []
        self.tref: Any = None
        self.flush_due = 0.0
        # Batches out at the pool at once: no more than it has processes. While they are
        # busy, messages gather into the next batch, so batches grow with the load.
        self.in_flight = 0
        self.slots = max(1, int(getattr(consumer.pool, "num_processes", 1) or 1))
        # On RabbitMQ the broker counts deliveries (a quorum queue's x-delivery-count); on
        # Redis our transport counts hand-backs itself and the header means nothing.
        transport = getattr(consumer.connection, "transport", None)
        self.counted = getattr(transport, "driver_type", None) == "amqp"
        self.max_redeliveries = int(getattr(app, "conf", {}).get("hf_max_redeliveries", 5))
        self.send_options = {"confirm_timeout": CONFIRM_TIMEOUT_S} if self.counted else {}

    def on_message(self, message: Any, body: Any, ack: Any, reject: Any, callbacks: Any,
                   **kwargs: Any) -> None:
        """Admit one message, whatever it holds: nothing a producer sends raises out of here.
        A message with no usable command id is parked whole in the dead-letter inbox, as is
        one handed back too often (it keeps killing workers)."""
        if self.counted and self._poison(message):
            return
        try:
            item = admit(message.headers, message.decode,
                         (message.delivery_info or {}).get("routing_key"))
        except Unadmittable as exc:
            park_and_settle(message, str(exc))
            return
        except Exception as exc:  # admission is meant to raise nothing else: still, park
            park_and_settle(message, f"unreadable message: {exc!r}"[:500])
            return
        held = Held(message, item)
        if item.due_at > time.time():
            # A retry with a countdown: held (and its lease renewed) until due. The timer
            # runs on the monotonic clock, so it is given a delay, not a wall-clock time.
            self.consumer.qos.increment_eventually()
            self.consumer.timer.call_after(item.due_at - time.time(), partial(self._due, held))
            return
        self._add(held)

    def _poison(self, message: Any) -> bool:
        headers = message.headers if isinstance(message.headers, dict) else {}
        count = headers.get("x-delivery-count")
        if not isinstance(count, int) or count <= 0:
            return False
        metrics.REDELIVERIES.inc()
        if count <= self.max_redeliveries:
            return False
        park_and_settle(message, f"poison message: handed back {count} times by workers "
                        "that died or gave up while holding it")
        return True

    def _due(self, held: Held) -> None:
        self.consumer.qos.decrement_eventually()
        self._add(held)

    def _add(self, held: Held) -> None:
        self.buffer.append(held)
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
        held, self.buffer = self.buffer, []
        self.in_flight += 1
        self.consumer.pool.apply_async(
            run_batch, args=([h.item for h in held],),
            callback=partial(self._done, held), error_callback=partial(self._failed, held))

    def _done(self, held: list[Held], verdicts: list[Verdict]) -> None:
        self.in_flight -= 1
        try:
            self._settle(held, verdicts)
        finally:
            self.flush()

    def _settle(self, held: list[Held], verdicts: list[Verdict]) -> None:
        settled = []
        for one, verdict in zip(held, verdicts, strict=True):
            if verdict.action is Action.REQUEUE:
                one.message.reject(requeue=True)
                continue
            if verdict.action is Action.RETRY and not self._send_again(one.item, verdict):
                forget(one.message)  # it comes back after the visibility timeout
                continue
            settled.append(one)
        try:
            _ack_all(settled)
        except Exception:
            log.exception("could not acknowledge a batch; its messages come back (and are "
                          "recognised as done)", extra={"event": "ack_failed"})
            for one in settled:
                forget(one.message)

    def _send_again(self, item: BatchItem, verdict: Verdict) -> bool:
        """The same task id and kwargs, due after the delay, with one budget spent more;
        False when the broker would not take it."""
        spent = item._replace(**{verdict.budget: getattr(item, verdict.budget) + 1})
        # The due time travels as the eta header, set here rather than by a countdown: on
        # quorum queues Celery would route a countdown through its delayed-delivery exchanges.
        due = datetime.fromtimestamp(time.time() + verdict.delay_s, UTC).isoformat()
        try:
            self.app.send_task(item.task, args=item.args, kwargs=item.kwargs,
                               task_id=item.command_id, retries=spent.waits + spent.outages,
                               queue=item.queue, headers={**budget_headers(spent), "eta": due},
                               **self.send_options)
        except Exception:
            log.exception("could not send a retry; the message will come back",
                          extra={"event": "retry_not_sent", "command_id": item.command_id})
            return False
        return True

    def _failed(self, held: list[Held], exc: BaseException) -> None:
        self.in_flight -= 1
        self.flush()
        log.error("batch lost; its messages go back to their queues",
                  extra={"event": "batch_lost", "size": len(held), "error": repr(exc)})
        for one in held:
            one.message.reject(requeue=True)


def _ack_all(held: list[Held]) -> None:
    if not held:
        return
    qos: Any = getattr(held[0].message.channel, "qos", None)  # py-amqp channels have none
    if hasattr(qos, "ack_many"):
        qos.ack_many([one.message.delivery_tag for one in held])
        for one in held:
            one.message._state = "ACK"  # what Message.ack() would have recorded
        return
    for one in held:
        one.message.ack()


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
