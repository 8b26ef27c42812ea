"""What the service counts, in the Prometheus client library's own exposition format.

Answers are counted (and timed) as they are sent. The values the service keeps anyway (long-
polls waiting and woken, in-process hits, the read cache's counters) are not copied on every
request: they are synced into the metrics when scraped, and every second. With
``QUERY_WORKERS`` > 1 the server's processes count into prometheus_client's multiprocess
files (``PROMETHEUS_MULTIPROC_DIR``, set by ``python -m queries_service``), so whichever
process answers a scrape answers for the whole host.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.multiprocess import MultiProcessCollector

CONTENT_TYPE: Final = CONTENT_TYPE_LATEST
# What the service keeps -> the counter it is synced into (names kept from the first version).
KEPT: Final = {
    "local_hits": "Views answered from this process",
    "long_polls_woken": "Long-polls woken by a projection (not by their wait running out)",
    "cache_reads_primary": "Read cache: reads from the primary",
    "cache_reads_replica": "Read cache: reads from the replica",
    "cache_replica_fallbacks": "Read cache: replica reads that failed over to the primary",
    "cache_fresh_reads": "Read cache: reads sent to the primary for a min_version",
    "cache_errors": "Read cache: reads that found no Redis answering",
}
Reading = Callable[[], tuple[int, dict[str, int]]]


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            MultiProcessCollector(self.registry)  # type: ignore[no-untyped-call]
            own = CollectorRegistry()  # values live in the files; the collector reads them
        else:
            own = self.registry
        self._requests = Counter("hf_query_requests", "Answers by route and status code",
                                 ["route", "code"], registry=own)
        self._seconds = Histogram(
            "hf_query_request_seconds", "Time to answer, by route (long-polls included)",
            ["route"], registry=own,
            buckets=(.0005, .001, .0025, .005, .01, .025, .05, .1, .25, 1, 5, 30, 60))
        self._waiting = Gauge("hf_query_long_polls_waiting", "Long-polls held, waiting for a "
                              "newer view", multiprocess_mode="livesum", registry=own)
        self._kept = {name: Counter(f"hf_query_{name}", doc, registry=own)
                      for name, doc in KEPT.items()}
        self._synced: dict[str, int] = dict.fromkeys(KEPT, 0)
        self._timers: dict[str, Any] = {}
        self._counters: dict[tuple[str, int], Any] = {}
        self._read: Reading | None = None

    def served(self, route: str, status: int, seconds: float | None = None) -> None:
        counter = self._counters.get((route, status))
        if counter is None:
            counter = self._counters[(route, status)] = self._requests.labels(route, str(status))
        counter.inc()
        if seconds is not None:
            timer = self._timers.get(route)
            if timer is None:
                timer = self._timers[route] = self._seconds.labels(route)
            timer.observe(seconds)

    def follow(self, read: Reading) -> None:
        """Sync what ``read`` returns (waiting long-polls; the kept counts by name)."""
        self._read = read

    def sync(self) -> None:
        if self._read is None:
            return
        waiting, kept = self._read()
        self._waiting.set(waiting)
        for name, value in kept.items():
            if name in self._kept and value > self._synced[name]:
                self._kept[name].inc(value - self._synced[name])
                self._synced[name] = value

    def render(self) -> bytes:
        self.sync()
        return generate_latest(self.registry)
