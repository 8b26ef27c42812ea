"""A provider far behind loses nothing (what the outside attack found: with FEED_MAXLEN
reached, 4,000 of 5,000 launches were trimmed away and silently failed at their deadline).
A real worker with FEED_MAXLEN=1000 and a provider group 5,000 events behind: the trim never
passes what the group has not acknowledged; its lag is a metric; entries deleted behind its
back show as a loss; a rebuild republishes the open work."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import redis

from shared import keys
from tests.conftest import Proc, free_port, wait_for

pytestmark = [pytest.mark.redis, pytest.mark.worker]
FEED = keys.FEED_STREAM_KEY
REQUESTS = 5_000


def metric(port: int, name: str, group: str) -> float | None:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=30).text
    for line in text.splitlines():
        if line.startswith(f'{name}{{group="{group}"}}'):
            return float(line.rsplit(" ", 1)[1])
    return None


def read(r: redis.Redis, count: int) -> list[Any]:
    got: Any = r.xreadgroup("slow", "c1", {FEED: ">"}, count=count)
    return [entry for _, batch in got or [] for entry in batch]


def test_a_group_5000_behind_loses_nothing_and_a_loss_is_seen_and_healed(
        rclient: redis.Redis, producer: Any, start_worker: Callable[..., Proc],
        stack_env: dict[str, str]) -> None:
    rclient.xgroup_create(FEED, "slow", id="$", mkstream=True)
    port = free_port()
    start_worker(2, FEED_MAXLEN="1000", WORKER_METRICS_PORT=str(port))
    for n in range(REQUESTS):
        producer.send_task("commands.create_request", queue="commands.requests",
                           task_id=f"c{n}", kwargs={"template_id": "x86-small",
                                                    "max_number": 1})
    wait_for(lambda: rclient.xinfo_stream(FEED)["entries-added"] >= REQUESTS, 120,
             every_s=0.5, what="5,000 acquire events")
    assert wait_for(lambda: metric(port, "hf_worker_feed_group_lag", "slow") == REQUESTS, 20,
                    what="the group's lag as a metric")

    # The group takes and acknowledges 1,000: the trim (every 5 s) removes those, no more.
    first = read(rclient, 1000)
    rclient.xack(FEED, "slow", *[entry_id for entry_id, _ in first])
    wait_for(lambda: rclient.xlen(FEED) == REQUESTS - 1000, 20, what="a trim pass")
    rest = read(rclient, REQUESTS)
    assert len(rest) == REQUESTS - 1000  # every launch it had not acknowledged is there
    seen = {f[b"event_id"] for _, f in first + rest}
    assert seen == {f"acquire:req-c{n}".encode() for n in range(REQUESTS)}
    assert metric(port, "hf_worker_feed_group_missed", "slow") == 0

    # Someone trims the feed behind the group's back: the loss shows, a rebuild heals it.
    rclient.xtrim(FEED, maxlen=0, approximate=False)
    assert wait_for(lambda: metric(port, "hf_worker_feed_group_missed", "slow") == 1, 20,
                    what="the loss as a metric")
    rclient.xgroup_destroy(FEED, "slow")
    rclient.xgroup_create(FEED, "slow", id="$")
    done = subprocess.run([sys.executable, "-m", "hfctl", "rebuild-read-model"],
                          env=stack_env, capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stderr
    again = read(rclient, 2 * REQUESTS)
    assert {f[b"event_id"] for _, f in again} == seen  # the open work, republished
    assert all(f[b"sig"] for _, f in again)  # signed, as every event is

    # Once the group has acknowledged everything, the feed falls back to its bound.
    rclient.xack(FEED, "slow", *[entry_id for entry_id, _ in again])
    wait_for(lambda: rclient.xlen(FEED) <= 1000, 20, what="the feed back to its bound")
