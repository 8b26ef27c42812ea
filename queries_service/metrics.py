"""What the service counts, in the Prometheus client library's own exposition format.

Request counts are a labelled counter; the values the service keeps anyway (long-polls
waiting, in-process hits, the read cache's counters) are read when scraped, by a collector,
not copied on every request.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Final

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

CONTENT_TYPE: Final = CONTENT_TYPE_LATEST


class _Live(Collector):
    """Samples read from the running service at scrape time."""

    def __init__(self, read: Callable[[], tuple[int, int, dict[str, int]]]) -> None:
        self.read = read

    def collect(self) -> Iterator[Metric]:
        waiting, local_hits, cache_counters = self.read()
        yield GaugeMetricFamily("hf_query_long_polls_waiting",
                                "Long-polls held, waiting for a newer view", value=waiting)
        yield CounterMetricFamily("hf_query_local_hits", "Views answered from this process",
                                  value=local_hits)
        for name, value in sorted(cache_counters.items()):
            yield CounterMetricFamily(f"hf_query_cache_{name}", f"Read cache: {name}",
                                      value=value)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self._requests = Counter("hf_query_requests", "Answers by route and status code",
                                 ["route", "code"], registry=self.registry)
        self._live: _Live | None = None

    def served(self, route: str, status: int) -> None:
        self._requests.labels(route, str(status)).inc()

    def follow(self, read: Callable[[], tuple[int, int, dict[str, int]]]) -> None:
        """Report what ``read`` returns (waiting long-polls, local hits, cache counters)."""
        if self._live is None:
            self._live = _Live(read)
            self.registry.register(self._live)
        else:
            self._live.read = read

    def render(self) -> bytes:
        return generate_latest(self.registry)
