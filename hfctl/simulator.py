"""A simulated provider: answers each new request by reporting its machines through the
public commands, ``pending`` and then ``running`` (or ``failed`` at a set rate), and each
return request by reporting its machines ``shutting-down`` and then ``terminated``.

It learns of requests as any outside system could: by listing them on the query service
(``GET /requests?status=pending`` and ``?status=in_progress``) a few times a second.
"""

from __future__ import annotations

import heapq
import logging
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from shared.client import CommandClient, fetch_json

log = logging.getLogger("hostfactory.simulator")


@dataclass(order=True)
class _Report:
    at: float
    machine_id: str = field(compare=False)
    status: str = field(compare=False)
    request_id: str = field(compare=False)
    metadata: dict[str, Any] = field(compare=False, default_factory=dict)


class Simulator:
    def __init__(self, client: CommandClient, query_url: str, failure_rate: float = 0.0,
                 delay_s: float = 1.0, seed: int | None = None, poll_s: float = 0.1) -> None:
        self.client = client
        self.query_url = query_url
        self.poll_s = poll_s
        self.failure_rate = failure_rate
        self.delay_s = delay_s
        self.random = random.Random(seed)
        self.queue: list[_Report] = []
        self.seen: set[str] = set()
        self.returning: set[str] = set()

    def plan(self, view: dict[str, Any]) -> None:
        """Machines for a request nobody has reported on yet."""
        request_id = view["request_id"]
        if request_id in self.seen or view["status"] != "pending" or view["machine_count"]:
            return
        self.seen.add(request_id)
        now = time.time()
        for n in range(view["max_number"]):
            machine_id = f"{request_id}-m{n}"
            start = now + self.random.uniform(0.05, 0.3) * self.delay_s
            ip = f"192.0.2.{self.random.randint(1, 254)}"  # TEST-NET-1: never routed
            meta = {"name": f"{machine_id}.sim.internal", "private_ip": ip,
                    "instance_type": "t3.micro", "price_type": "ondemand",
                    "launch_time": int(now)}
            heapq.heappush(self.queue, _Report(start, machine_id, "pending", request_id, meta))
            failed = self.random.random() < self.failure_rate
            final = _Report(start + self.random.uniform(0.5, 1.5) * self.delay_s, machine_id,
                            "failed" if failed else "running", request_id,
                            {"message": "simulated launch failure"} if failed else {})
            heapq.heappush(self.queue, final)
        log.info("planned machines", extra={"request_id": request_id,
                                            "machines": view["max_number"]})

    def plan_return(self, view: dict[str, Any]) -> None:
        """Terminate the machines a new return request gives back."""
        request_id = view["request_id"]
        if view.get("kind") != "return" or request_id in self.returning:
            return
        full = fetch_json(f"{self.query_url}/requests/{quote(request_id)}")
        if full is None:
            return
        self.returning.add(request_id)
        now = time.time()
        for machine in full.get("machines") or []:
            if machine["status"] in ("shutting-down", "terminated", "failed"):
                continue
            start = now + self.random.uniform(0.05, 0.3) * self.delay_s
            for status, at in (("shutting-down", start),
                               ("terminated", start + self.random.uniform(0.3, 1) * self.delay_s)):
                heapq.heappush(self.queue, _Report(at, machine["machine_id"], status,
                                                   machine["request_id"]))
        log.info("returning machines", extra={"request_id": request_id})

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

    def listing(self, status: str) -> Iterator[dict[str, Any]]:
        """Every summary view of requests in ``status``, page by page."""
        cursor: str | None = ""
        while cursor is not None:
            page = fetch_json(f"{self.query_url}/requests?status={status}&limit=500"
                              + (f"&cursor={quote(cursor)}" if cursor else ""))
            if page is None:
                return
            yield from page["requests"]
            cursor = page["next_cursor"]

    def look(self) -> None:
        listed = set()
        for view in self.listing("pending"):
            self.plan(view)
            listed.add(view["request_id"])
        self.seen &= listed  # reported on: no longer pending, never listed again
        returning = set()
        for view in self.listing("in_progress"):
            self.plan_return(view)
            returning.add(view["request_id"])
        self.returning &= returning

    def run(self, stop_after_s: float | None = None) -> None:
        deadline = None if stop_after_s is None else time.monotonic() + stop_after_s
        while deadline is None or time.monotonic() < deadline:
            try:
                self.look()
            except OSError as exc:  # the query service is not up yet, or restarting
                log.warning("cannot list pending requests", extra={"error": str(exc)})
            self.send_due()
            time.sleep(self.poll_s)
