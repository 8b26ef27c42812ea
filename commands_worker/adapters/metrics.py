"""The command worker's Prometheus metrics, whole for the worker host.

Pool processes count into prometheus_client's multiprocess files (``PROMETHEUS_MULTIPROC_DIR``,
set by ``commands_worker.app`` before anything imports prometheus_client); the main process
serves them on ``WORKER_METRICS_PORT`` together with what it reads when scraped, never
polled: queue depths, in-flight messages, open dead letters, the outbox backlog, messages
handed back, the templates version.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from typing import Any, Final

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from commands_worker.adapters import feed_trim
from shared import keys, names

log = logging.getLogger("hostfactory.worker")

COMMANDS: Final = Counter("hf_worker_commands", "Commands by task and outcome (applied, "
                          "superseded, rejected, duplicate, retry, requeued, dead_lettered)",
                          ["task", "outcome"])
BATCH_SIZE: Final = Histogram("hf_worker_batch_size", "Commands per applied batch",
                              buckets=(1, 2, 4, 8, 16, 32, 64, 128))
APPLY_SECONDS: Final = Histogram("hf_worker_apply_seconds", "One batch's store transaction",
                                 buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5))
PROJECTION_LAG: Final = Histogram("hf_worker_projection_lag_seconds",
                                  "From a batch's commit to its views written in Redis",
                                  buckets=(.0005, .001, .0025, .005, .01, .025, .05, .1, .25,
                                           .5, 1, 2.5, 5))
STORE_RETRIES: Final = Counter("hf_worker_store_retries", "Commands retried because the store "
                               "did not answer")
DEADLINES: Final = Counter("hf_worker_deadline_expiries", "Requests ended by their deadline")
CACHE_HEALS: Final = Counter("hf_worker_cache_heals", "Times the read cache was found to "
                             "have lost writes and was re-projected from the store: since "
                             "the time it still held (how=since), or whole (how=rebuild)",
                             ["how"])
REDELIVERIES: Final = Counter("hf_worker_redeliveries", "Messages handed back to their queue "
                              "after their worker died or gave them up")


def count_command(task: str, outcome: str) -> None:
    """One command's outcome; a task name off the wire that is not the contract's counts as
    ``other`` (a hostile producer must not mint series)."""
    COMMANDS.labels(task if task in names.QUEUE_OF_TASK else "other", outcome).inc()


class LiveCollector(Collector):
    """What the main process reads from Redis and the store when scraped."""

    def __init__(self, deps: Callable[[], Any], queues: tuple[str, ...]) -> None:
        self.deps = deps
        self.queues = queues

    def collect(self) -> Iterator[Metric]:
        d = self.deps()
        depth = GaugeMetricFamily("hf_worker_queue_depth", "Messages waiting per queue",
                                  labels=["queue"])
        inflight = GaugeMetricFamily("hf_worker_inflight", "Messages taken by a worker and "
                                     "not acknowledged yet, per queue", labels=["queue"])
        for queue, (waiting, held) in d.queues.depths(self.queues).items():
            depth.add_metric([queue], waiting)
            if held is not None:  # RabbitMQ does not tell over AMQP (see broker/queues.py)
                inflight.add_metric([queue], held)
        yield depth
        yield inflight
        counts = d.store.counts()
        yield GaugeMetricFamily("hf_worker_dead_letters_open", "Dead letters not replayed",
                                value=counts["dead_letters_open"])
        yield GaugeMetricFamily("hf_worker_outbox_backlog", "Outbox rows not projected yet "
                                "(or projected, not recorded so yet); rows kept after "
                                "projection to heal the cache are not counted",
                                value=counts["outbox"])
        _, version = d.store.templates()
        yield GaugeMetricFamily("hf_worker_templates_version", "Version of the loaded "
                                "templates list", value=version)
        yield from _feed_groups(d.cache)
        yield GaugeMetricFamily("hf_worker_templates_refused", "Templates of the templates "
                                "file left out at its last load (each named in the log and "
                                "by hfctl templates validate)", value=_refused(d.cache))


def _feed_groups(cache: Any) -> Iterator[Metric]:
    """Each provider group's standing on the feed: what it has not read, not acknowledged,
    and whether it lost an entry (deleted before it acknowledged it)."""
    lag = GaugeMetricFamily("hf_worker_feed_group_lag", "Feed entries a provider group has "
                            "not read yet (-1: Redis cannot tell)", labels=["group"])
    pending = GaugeMetricFamily("hf_worker_feed_group_pending", "Feed entries a provider "
                                "group read and has not acknowledged", labels=["group"])
    missed = GaugeMetricFamily("hf_worker_feed_group_missed", "1 when a feed entry a provider "
                               "group had not acknowledged was deleted", labels=["group"])
    for group in feed_trim.groups(cache):
        lag.add_metric([group.name], -1 if group.lag is None else group.lag)
        pending.add_metric([group.name], group.pending)
        missed.add_metric([group.name], int(group.missed))
    yield from (lag, pending, missed)
    yield GaugeMetricFamily("hf_worker_feed_length", "Entries in the provider feed",
                            value=int(cache.xlen(keys.FEED_STREAM_KEY)))


def _refused(cache: Any) -> int:
    """How many templates the last load left out (the whole file, when none was usable)."""
    raw = cache.get(keys.TEMPLATES_STATUS_KEY)
    try:
        status = json.loads(raw) if raw else {}
        return len(status["refused"]) + (1 if status.get("file_problems") else 0)
    except (ValueError, KeyError, TypeError):
        return 0


def serve(port: int, host: str, deps: Callable[[], Any], queues: tuple[str, ...]) -> None:
    """The host's endpoint: every pool process's counts, and the live readings."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    registry.register(LiveCollector(deps, queues))
    start_http_server(port, addr=host, registry=registry)
    log.info("metrics served", extra={"event": "metrics_served", "port": port})
