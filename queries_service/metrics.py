"""What the service counts, and its Prometheus text."""

from __future__ import annotations

from collections import Counter
from typing import Final

CONTENT_TYPE: Final = "text/plain; version=0.0.4"


class Metrics:
    def __init__(self) -> None:
        self.requests_served: Counter[tuple[str, int]] = Counter()

    def served(self, route: str, status: int) -> None:
        self.requests_served[(route, status)] += 1

    def render(self, waiting: int, local_hits: int, cache_counters: dict[str, int]) -> str:
        lines = ["# TYPE hf_query_long_polls_waiting gauge",
                 f"hf_query_long_polls_waiting {waiting}",
                 "# TYPE hf_query_requests_total counter"]
        for (route, code), count in sorted(self.requests_served.items()):
            lines.append(f'hf_query_requests_total{{route="{route}",code="{code}"}} {count}')
        lines += ["# TYPE hf_query_local_hits_total counter",
                  f"hf_query_local_hits_total {local_hits}"]
        for name, value in sorted(cache_counters.items()):
            lines.append(f"# TYPE hf_query_cache_{name}_total counter")
            lines.append(f"hf_query_cache_{name}_total {value}")
        return "\n".join(lines) + "\n"
