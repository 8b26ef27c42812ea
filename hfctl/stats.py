"""``hfctl stats``: one screen for the operator on call, read from the same metrics Prometheus
scrapes (each worker host's endpoint, each query service's ``/metrics``). Rates and the lag
come from two readings ``--every`` seconds apart; ``--watch`` keeps refreshing."""

from __future__ import annotations

import argparse
import time
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@dataclass
class Reading:
    at: float
    samples: Samples = field(default_factory=dict)
    down: list[str] = field(default_factory=list)
    up: list[str] = field(default_factory=list)

    def total(self, name: str, **labels: str) -> float:
        return sum(v for (n, ls), v in self.samples.items() if n == name
                   and all(dict(ls).get(k) == want for k, want in labels.items()))

    def by(self, name: str, label: str) -> dict[str, float]:
        found: dict[str, float] = {}
        for (n, ls), v in self.samples.items():
            if n == name and label in dict(ls):
                found[dict(ls)[label]] = found.get(dict(ls)[label], 0.0) + v
        return found


def read(urls: Iterable[str], timeout_s: float = 3.0) -> Reading:
    reading = Reading(time.time())
    for url in urls:
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as response:
                text = response.read().decode()
        except OSError:
            reading.down.append(url)
            continue
        reading.up.append(url)
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                key = (s.name, tuple(sorted(s.labels.items())))
                reading.samples[key] = reading.samples.get(key, 0.0) + s.value
    return reading


def _quantile(before: Reading, after: Reading, name: str, q: float) -> float | None:
    """The q-quantile of what was observed between two readings (bucket deltas)."""
    buckets = sorted((float(le), after.total(f"{name}_bucket", le=le)
                      - before.total(f"{name}_bucket", le=le))
                     for le in after.by(f"{name}_bucket", "le"))
    total = buckets[-1][1] if buckets else 0
    if total <= 0:
        return None
    for bound, count in buckets:
        if count >= q * total:
            return bound
    return None


def screen(before: Reading, after: Reading) -> str:
    span = max(after.at - before.at, 1e-6)
    lines = [time.strftime("hostfactory-cqrs  %Y-%m-%d %H:%M:%S", time.localtime(after.at))]
    up = len(after.up)
    lines.append(f"targets up {up}/{up + len(after.down)}"
                 + (f"   DOWN: {', '.join(after.down)}" if after.down else ""))
    depth, inflight = after.by("hf_worker_queue_depth", "queue"), after.by("hf_worker_inflight",
                                                                          "queue")
    for queue in sorted(depth):
        held = inflight.get(queue)  # none on RabbitMQ: it does not tell over AMQP
        lines.append(f"queue {queue:<20} waiting {depth[queue]:>8.0f}   in flight "
                     + (f"{held:>6.0f}" if held is not None else f"{'-':>6}"))
    rates = {o: (after.total("hf_worker_commands_total", outcome=o)
                 - before.total("hf_worker_commands_total", outcome=o)) / span
             for o in after.by("hf_worker_commands_total", "outcome")}
    lines.append("commands/s  " + "  ".join(f"{o} {r:.1f}" for o, r in sorted(rates.items()))
                 if rates else "commands/s  (none yet)")
    lag = _quantile(before, after, "hf_worker_projection_lag_seconds", 0.99)
    lines.append(f"projection lag p99 {'-' if lag is None else f'≤ {lag * 1000:.1f} ms'}")
    lines.append(f"dead letters open {after.total('hf_worker_dead_letters_open'):.0f}   "
                 f"outbox backlog {after.total('hf_worker_outbox_backlog'):.0f}   "
                 f"deadline expiries {after.total('hf_worker_deadline_expiries_total'):.0f}")
    served = (after.total("hf_query_requests_total") - before.total("hf_query_requests_total"))
    lines.append(f"query answers/s {served / span:.1f}   long-polls waiting "
                 f"{after.total('hf_query_long_polls_waiting'):.0f}")
    return "\n".join(lines)


def cmd_stats(args: argparse.Namespace) -> int:
    urls = [*args.worker, *(f"{q.rstrip('/')}/metrics" for q in args.query)]
    before = read(urls)
    while True:
        time.sleep(args.every)
        after = read(urls)
        text = screen(before, after)
        print(("\x1b[2J\x1b[H" + text) if args.watch else text, flush=True)
        if not args.watch:
            return 0 if not after.down else 1
        before = after
