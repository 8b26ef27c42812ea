"""The command-side baseline: a bare Celery app, same broker and worker settings, no-op task.

On RabbitMQ (``BROKER_URL`` amqp://…) its queue is a quorum queue like the contract's, and each
pool process notes how many tasks it finished in a file of its own (``BENCH_DONE_DIR``; a few
microseconds a task), since RabbitMQ does not tell over AMQP when the last one was
acknowledged."""

from __future__ import annotations

import os

from celery import Celery
from kombu import Exchange, Queue

from commands_worker.entrypoints.batching import FLUSH_EVERY

BROKER = os.environ.get("BROKER_URL") or os.environ.get("REDIS_URL", "redis://localhost:6379/0")
app = Celery("bare", broker=BROKER)
app.conf.update(
    task_serializer="json", accept_content=["json"], task_ignore_result=True,
    # The same prefetch as the command worker (entrypoints/celery_app.py), so the two differ
    # only in what the worker does per message.
    task_acks_late=True, task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=2 * FLUSH_EVERY,
    worker_hijack_root_logger=False, worker_send_task_events=False,
    broker_connection_retry_on_startup=True,
)
if BROKER.startswith("amqp"):
    app.conf.task_queues = [Queue("bench.noop", Exchange("bench.noop", "direct"),
                                  routing_key="bench.noop",
                                  queue_arguments={"x-queue-type": "quorum"})]
_done = {"fd": -1, "count": 0}


@app.task(name="bench.noop")
def noop(**kwargs: object) -> None:
    where = os.environ.get("BENCH_DONE_DIR")
    if where:
        if _done["fd"] < 0:
            _done["fd"] = os.open(os.path.join(where, f"done-{os.getpid()}"),
                                  os.O_WRONLY | os.O_CREAT, 0o644)
        _done["count"] += 1
        os.pwrite(_done["fd"], f"{_done['count']:>12}".encode(), 0)
