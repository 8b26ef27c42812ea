"""The Celery app of the command worker.

    celery -A commands_worker.app worker -Q commands.requests,commands.machines

Settings for at-least-once delivery made harmless (README, "Delivery guarantees"): late
acknowledgement (a message is acknowledged only after its command is committed and
projected), requeue when a pool process dies mid-batch, a prefetch large enough to fill
batches (every reserved message is recorded as unacknowledged by the transport, so a dead
worker strands none), a lease-based visibility timeout of seconds, and a bounded count of
hand-backs after which a message is dead-lettered instead of looping.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlparse

from celery import Celery, bootsteps
from kombu import Exchange, Queue

from commands_worker.entrypoints.batching import FLUSH_EVERY
from shared import logs, names
from shared.settings import Settings

settings = Settings.from_env()
logs.configure(settings.log_level)


def _transport_for(url: str) -> str | None:
    """Our loss-free transport where the broker is plain Redis; kombu's own otherwise."""
    scheme = urlparse(url).scheme
    if scheme in ("redis", "rediss"):
        return "commands_worker.adapters.broker.transport:Transport"
    return None


def _transport_options(s: Settings) -> dict[str, object]:
    options: dict[str, object] = {
        "visibility_timeout": s.visibility_timeout_s,
        "unacked_restore_interval": max(1.0, s.visibility_timeout_s / 4),
        "unacked_restore_throttle": 1,
    }
    if _transport_for(s.broker_url):
        options["max_redeliveries"] = s.max_redeliveries
    if os.environ.get("BROKER_SENTINEL_MASTER"):  # kombu's sentinel:// broker URLs
        options["master_name"] = os.environ["BROKER_SENTINEL_MASTER"]
    return options


app = Celery("commands_worker", broker=settings.broker_url,
             include=["commands_worker.entrypoints.tasks"])
app.conf.update(
    broker_transport=_transport_for(settings.broker_url),
    broker_transport_options=_transport_options(settings),
    broker_connection_retry_on_startup=True,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    # Enough reserved messages per pool process to fill a batch (see batching.py); they are
    # recorded as unacknowledged, so a dead worker still loses none of them.
    worker_prefetch_multiplier=2 * FLUSH_EVERY,
    worker_consumer="commands_worker.adapters.broker.consumer:Consumer",
    worker_hijack_root_logger=False,
    worker_send_task_events=False,
    task_queues=[Queue(q, Exchange(q, "direct"), routing_key=q) for q in names.ALL_QUEUES],
    task_default_queue=names.REQUESTS_QUEUE,
    task_routes={task: {"queue": queue} for task, queue in names.QUEUE_OF_TASK.items()},
)


class Housekeeping(bootsteps.StartStopStep):  # type: ignore[misc]
    """In the worker's main process: start-up (schema, templates, repairs), then every
    second the outbox repair and the dead-letter inbox, and hourly the retention purge."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.tref: Any = None
        self.ready = False
        self.last_purge = 0.0

    def start(self, parent: Any) -> None:
        self.tref = parent.timer.call_repeatedly(1.0, self.tick, priority=10)
        self.tick()

    def stop(self, parent: Any) -> None:
        if self.tref is not None:
            self.tref.cancel()
            self.tref = None

    def tick(self) -> None:
        import time

        from commands_worker import bootstrap
        from commands_worker.service_layer import maintenance as housekeeping

        try:
            d = bootstrap.deps()
            if not self.ready:
                bootstrap.load_and_project_templates(d)
                self.ready = True
            housekeeping.repair_outbox(d)
            housekeeping.drain_dead_letter_inbox(d)
            if time.monotonic() - self.last_purge > 3600:
                housekeeping.purge_expired_commands(d)
                self.last_purge = time.monotonic()
        except Exception:
            bootstrap.log.exception("housekeeping failed; retrying in a second",
                                    extra={"event": "housekeeping_failed"})


app.steps["consumer"].add(Housekeeping)
