"""The command-side baseline: a bare Celery app, same broker and worker settings, no-op task."""

from __future__ import annotations

import os

from celery import Celery

from commands_worker.entrypoints.batching import FLUSH_EVERY

app = Celery("bare", broker=os.environ.get("REDIS_URL", "redis://localhost:6379/0"))
app.conf.update(
    task_serializer="json", accept_content=["json"], task_ignore_result=True,
    # The same prefetch as the command worker (entrypoints/celery_app.py), so the two differ
    # only in what the worker does per message.
    task_acks_late=True, task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=2 * FLUSH_EVERY,
    worker_hijack_root_logger=False, worker_send_task_events=False,
    broker_connection_retry_on_startup=True,
)


@app.task(name="bench.noop")
def noop(**kwargs: object) -> None:
    return None
