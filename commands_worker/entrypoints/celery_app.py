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

import logging
from typing import Any
from urllib.parse import urlparse

from celery import Celery, signals

from commands_worker import bootstrap
from commands_worker.adapters.broker.consumer import use_inbox
from commands_worker.entrypoints.batching import FLUSH_EVERY
from commands_worker.entrypoints.housekeeping import Housekeeping
from shared import brokers, logs, names
from shared.settings import Settings

settings = Settings.from_env()
logs.configure(settings.log_level)
log = logging.getLogger("hostfactory.worker")


def _transport_for(url: str) -> str | None:
    """Our loss-free transport where the broker is plain Redis; kombu's own otherwise (on
    RabbitMQ, py-amqp: quorum queues need no help to lose nothing)."""
    scheme = urlparse(brokers.urls(url)[0]).scheme
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
    if s.broker_sentinel_master:  # kombu's sentinel:// broker URLs
        options["master_name"] = s.broker_sentinel_master
    if brokers.is_amqp(s.broker_url):
        # The worker's own sends (a report's retry while it waits for its request) are
        # confirmed before the message they replace is acknowledged.
        options = {"confirm_publish": True}
    return options


app = Celery("commands_worker", broker=settings.broker_url,
             include=["commands_worker.entrypoints.tasks"])
app.conf.update(
    broker_transport=_transport_for(settings.broker_url),
    broker_transport_options=_transport_options(settings),
    broker_connection_retry_on_startup=True,
    # On RabbitMQ, AMQP heartbeats: a worker host that dies without closing its connection is
    # given up by the broker, and its messages handed back, within about the visibility
    # timeout (Redis's lease), not Celery's default of minutes.
    broker_heartbeat=max(1, int(settings.visibility_timeout_s // 3)),
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
    task_queues=brokers.command_queues(settings.broker_url),
    task_create_missing_queues=False,
    # On RabbitMQ: how often a message may come back (its x-delivery-count) before it is
    # dead-lettered as poison; on Redis our transport counts the same (``max_redeliveries``).
    hf_max_redeliveries=settings.max_redeliveries,
    task_default_queue=names.REQUESTS_QUEUE,
    task_routes={task: {"queue": queue} for task, queue in names.QUEUE_OF_TASK.items()},
)


app.steps["consumer"].add(Housekeeping)
use_inbox(lambda: bootstrap.deps().inbox)


@signals.worker_process_init.connect  # type: ignore[untyped-decorator]
def _warm(**_: Any) -> None:
    """Each pool process opens its store and Redis connections and loads the projector's
    scripts when it starts, not in its first batch: the first commands after a start waited
    tens of milliseconds for that (bench.fresh). A failure here only leaves it to that batch."""
    try:
        bootstrap.warm(bootstrap.deps())
    except Exception as exc:
        log.warning("pool process not warmed; its first batch connects",
                    extra={"event": "warm_failed", "error": str(exc)[:300]})


@signals.import_modules.connect  # type: ignore[untyped-decorator]
def _only_the_contracts_tasks(sender: Any = None, **_: Any) -> None:
    """Celery registers built-in tasks (celery.group, celery.chord_unlock, celery.map, …) in
    every app, and a worker runs any of them that arrives on its queues: celery.group would
    relay a message of the sender's choosing, chord_unlock retries for ever. This worker runs
    the contract's tasks and nothing else; any other task name is refused and dead-lettered
    (our consumer's on_unknown_task)."""
    for name in [n for n in app.tasks if n not in names.QUEUE_OF_TASK]:
        app.tasks.pop(name, None)
