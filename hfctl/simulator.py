"""A simulated provider: answers each new request by reporting its machines through the
public commands, ``pending`` and then ``running`` (or ``failed`` at a set rate).

It learns of new requests from the projector's announcements on the views channel (and, on
start, from the pending index), exactly as an outside system could.
"""

from __future__ import annotations

import heapq
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Any, cast

import orjson
import redis

from shared import keys
from shared.client import CommandClient

log = logging.getLogger("hostfactory.simulator")


@dataclass(order=True)
class _Report:
    at: float
    machine_id: str = field(compare=False)
    status: str = field(compare=False)
    request_id: str = field(compare=False)
    metadata: dict[str, Any] = field(compare=False, default_factory=dict)


class Simulator:
    def __init__(self, client: CommandClient, cache: redis.Redis, failure_rate: float = 0.0,
                 delay_s: float = 1.0, seed: int | None = None) -> None:
        self.client = client
        self.cache = cache
        self.failure_rate = failure_rate
        self.delay_s = delay_s
        self.random = random.Random(seed)
        self.queue: list[_Report] = []
        self.seen: set[str] = set()

    def plan(self, request_id: str) -> None:
        if request_id in self.seen:
            return
        doc = self.cache.get(keys.request_summary_key(request_id))
        if doc is None:
            return
        view = orjson.loads(doc)
        if view["status"] != "pending" or view["machine_count"]:
            return
        self.seen.add(request_id)
        now = time.time()
        for n in range(view["max_number"]):
            machine_id = f"{request_id}-m{n}"
            start = now + self.random.uniform(0.05, 0.3) * self.delay_s
            ip = f"192.0.2.{self.random.randint(1, 254)}"  # TEST-NET-1: never routed
            meta = {"name": f"sim-{n}", "private_ip": ip, "instance_type": "t3.micro",
                    "price_type": "ondemand", "launch_time": int(now)}
            heapq.heappush(self.queue, _Report(start, machine_id, "pending", request_id, meta))
            failed = self.random.random() < self.failure_rate
            final = _Report(start + self.random.uniform(0.5, 1.5) * self.delay_s, machine_id,
                            "failed" if failed else "running", request_id,
                            {"message": "simulated launch failure"} if failed else {})
            heapq.heappush(self.queue, final)
        log.info("planned machines", extra={"request_id": request_id,
                                            "machines": view["max_number"]})

    def send_due(self) -> int:
        sent = 0
        while self.queue and self.queue[0].at <= time.time():
            report = heapq.heappop(self.queue)
            self.client.update_machine_status(
                report.machine_id, report.status, request_id=report.request_id,
                metadata=report.metadata or None, observed_at=report.at,
                correlation_id=report.request_id)
            sent += 1
        return sent

    def run(self, stop_after_s: float | None = None) -> None:
        pubsub = self.cache.pubsub(  # type: ignore[no-untyped-call]
            ignore_subscribe_messages=True)
        pubsub.subscribe(keys.VIEWS_CHANNEL)
        pending = cast(list[bytes], self.cache.zrange(keys.requests_by_status_key("pending"),
                                                      0, -1))
        for member in pending:
            self.plan(member.decode())
        prefix = keys.request_summary_key("")
        deadline = None if stop_after_s is None else time.monotonic() + stop_after_s
        while deadline is None or time.monotonic() < deadline:
            message = pubsub.get_message(timeout=0.05)
            if message is not None:
                key, _, version = message["data"].decode().partition(" ")
                if key.startswith(prefix) and version == "1":
                    self.plan(key.removeprefix(prefix))
            self.send_due()
