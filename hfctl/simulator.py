"""A simulated provider, written as any provider would be (docs/providers.md): it reads the
provider feed through a consumer group and reports over the public commands, nothing else.

- ``acquire``: each machine ``pending``, then ``running`` with a host name and addresses (or
  ``failed`` at ``failure_rate``); at ``reclaim_rate`` a running machine then gets a spot
  interruption notice (``reclaim_at`` two minutes ahead).
- ``return`` and ``release``: each machine ``shutting-down``, then ``terminated``.

An event is acknowledged once every report it caused was sent; a simulator that dies before
that leaves it pending, and another (or the same one restarted) claims it after
``CLAIM_IDLE_MS``. Reports carry command ids derived from the machine and status, so a
redelivered event changes nothing.
"""

from __future__ import annotations

import heapq
import json
import logging
import random
import socket
import time
from dataclasses import dataclass, field
from typing import Any, Final

import redis

from hfctl import feedloop
from shared import feed as feeds
from shared import keys
from shared.client import CommandClient

log = logging.getLogger("hostfactory.simulator")
GROUP: Final = "simulator"
CLAIM_IDLE_MS: Final = 30_000


@dataclass(order=True)
class _Report:
    at: float
    machine_id: str = field(compare=False)
    status: str = field(compare=False)
    request_id: str | None = field(compare=False)
    entry_id: str = field(compare=False)
    metadata: dict[str, Any] = field(compare=False, default_factory=dict)


class Simulator:
    def __init__(self, client: CommandClient, feed: redis.Redis, failure_rate: float = 0.0,
                 delay_s: float = 1.0, seed: int | None = None, reclaim_rate: float = 0.0,
                 consumer: str | None = None, key: bytes | None = None) -> None:
        self.client = client
        self.feed = feed
        # With the pair's feed signing key, only entries it signed are acted on.
        self.key = key
        self.failure_rate = failure_rate
        self.reclaim_rate = reclaim_rate
        self.delay_s = delay_s
        self.random = random.Random(seed)
        self.consumer = consumer or f"{socket.gethostname()}-{random.getrandbits(32):08x}"
        self.queue: list[_Report] = []
        self.unsent: dict[str, int] = {}  # feed entry id -> reports not sent yet

    def join(self) -> None:
        feedloop.join_group(self.feed, GROUP)

    def take(self, block_ms: int = 100) -> int:
        """Claim what a dead consumer left, then read new events; plan their reports."""
        reclaimed: Any = self.feed.xautoclaim(keys.FEED_STREAM_KEY, GROUP, self.consumer,
                                              CLAIM_IDLE_MS, "0-0", count=100)
        claimed = reclaimed[1]
        read: Any = self.feed.xreadgroup(GROUP, self.consumer, {keys.FEED_STREAM_KEY: ">"},
                                    count=100, block=block_ms)
        entries = list(claimed) + [e for _, batch in read or [] for e in batch]
        for entry_id, fields in entries:
            try:
                event = (feeds.verified(self.key, fields) if self.key
                         else json.loads(fields[b"event"]))
            except (feeds.UnprovenEvent, KeyError, ValueError) as exc:
                log.error("feed entry not acted on: acknowledged",
                          extra={"entry": entry_id.decode(), "reason": str(exc)})
                self.feed.xack(keys.FEED_STREAM_KEY, GROUP, entry_id)
                continue
            self.plan(entry_id.decode(), event)
        return len(entries)

    def plan(self, entry_id: str, event: dict[str, Any]) -> None:
        if entry_id in self.unsent:
            return  # claimed back from ourselves: already planned
        reports = (self._acquire(entry_id, event) if event["type"] == "acquire"
                   else self._give_back(entry_id, event))
        self.unsent[entry_id] = len(reports)
        for report in reports:
            heapq.heappush(self.queue, report)
        if not reports:
            self.feed.xack(keys.FEED_STREAM_KEY, GROUP, entry_id)
        log.info("planned", extra={"event_id": event["event_id"], "reports": len(reports)})

    def _acquire(self, entry_id: str, event: dict[str, Any]) -> list[_Report]:
        request_id, now, reports = event["request_id"], time.time(), []
        for n in range(event["machine_count"]):
            machine_id = f"{request_id}-m{n}"
            start = now + self.random.uniform(0.05, 0.3) * self.delay_s
            up = start + self.random.uniform(0.5, 1.5) * self.delay_s
            meta = {"name": f"{machine_id}.sim.internal", "instance_type": "t3.micro",
                    "private_ip": f"192.0.2.{self.random.randint(1, 254)}",  # TEST-NET-1
                    "price_type": "ondemand", "launch_time": int(now)}
            reports.append(_Report(start, machine_id, "pending", request_id, entry_id, meta))
            if self.random.random() < self.failure_rate:
                reports.append(_Report(up, machine_id, "failed", request_id, entry_id,
                                       {"message": "simulated launch failure"}))
                continue
            reports.append(_Report(up, machine_id, "running", request_id, entry_id, meta))
            if self.random.random() < self.reclaim_rate:
                reports.append(_Report(up + self.delay_s, machine_id, "running", request_id,
                                       entry_id, {"reclaim_at": up + self.delay_s + 120}))
        return reports

    def _give_back(self, entry_id: str, event: dict[str, Any]) -> list[_Report]:
        now, reports = time.time(), []
        for machine in event["machines"]:
            start = now + self.random.uniform(0.05, 0.3) * self.delay_s
            end = start + self.random.uniform(0.3, 1.0) * self.delay_s
            for status, at in (("shutting-down", start), ("terminated", end)):
                reports.append(_Report(at, machine["machine_id"], status, None, entry_id))
        return reports

    def send_due(self) -> int:
        sent = 0
        while self.queue and self.queue[0].at <= time.time():
            report = heapq.heappop(self.queue)
            suffix = "-reclaim" if "reclaim_at" in report.metadata else ""
            self.client.update_machine_status(
                report.machine_id, report.status, request_id=report.request_id,
                metadata=report.metadata or None, observed_at=report.at,
                command_id=f"sim-{report.machine_id}-{report.status}{suffix}"[:200])
            sent += 1
            self.unsent[report.entry_id] -= 1
            if self.unsent[report.entry_id] == 0:
                del self.unsent[report.entry_id]
                self.feed.xack(keys.FEED_STREAM_KEY, GROUP, report.entry_id)
        return sent

    def step(self) -> None:
        self.take(block_ms=50 if self.queue else 200)
        self.send_due()

    def run(self, stop_after_s: float | None = None) -> None:
        feedloop.run(self.join, self.step, stop_after_s)
