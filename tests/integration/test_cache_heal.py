"""The read cache heals itself (issue "A failover of the read cache or of the store loses
nothing", its cache-emptied part): a running worker notices a cache that was flushed, or that
went back to an older state (a restore from an old snapshot, a failover to a lagging replica),
and re-projects it from the store, without an operator running hfctl rebuild-read-model."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from shared import keys
from tests.conftest import Proc, wait_for
from tests.integration.test_rebuild import snapshot
from tests.integration.test_replicas import RedisServer

pytestmark = [pytest.mark.redis, pytest.mark.worker]
REQUESTS = 30


def test_a_flushed_or_rolled_back_cache_heals_by_itself(
        redis_url: str, start_worker: Callable[..., Proc], producer: Any) -> None:
    cache_url = redis_url.rsplit("/", 1)[0] + "/10"
    cache = redis.Redis.from_url(cache_url)
    cache.flushdb()
    worker = start_worker(2, CACHE_URL=cache_url)
    send(producer, range(REQUESTS))
    wait_for(lambda: all(cache.mget([keys.command_key(f"u{n}") for n in range(REQUESTS)])),
             60, what="every command applied")
    wait_for(lambda: cache.exists(keys.CACHE_MARK_KEY), 10, what="the worker's mark")
    before = snapshot(cache)

    cache.flushdb()  # by hand, or a Redis restarted without its data
    wait_for(lambda: snapshot(cache) == before, 30, every_s=0.2, what="the flushed cache healed")
    assert "read cache is empty" in worker.output()

    # Restored from an older snapshot: the mark goes back, views written since are missing.
    mark = float(cache.get(keys.CACHE_MARK_KEY) or 0)
    cache.set(keys.CACHE_MARK_KEY, repr(mark - 60))
    cache.delete(*[keys.request_key(f"req-h{n}") for n in range(0, REQUESTS, 3)])
    wait_for(lambda: snapshot(cache) == before, 30, every_s=0.2,
             what="the rolled-back cache healed")
    assert "read cache went back" in worker.output()
    cache.flushdb()
    cache.close()


def test_a_cache_restarted_from_an_older_snapshot_heals_by_itself(
        tmp_path: Path, start_worker: Callable[..., Proc], producer: Any) -> None:
    """A real restore: the cache's Redis saves a snapshot, takes more writes, dies (-9) and
    comes back from that snapshot. The worker sees another server holding an older mark and
    re-projects what was projected since, from the kept outbox, not the whole cache."""
    (tmp_path / "cache").mkdir()
    server = RedisServer(tmp_path / "cache").start()
    cache = redis.Redis(port=server.port)
    worker = start_worker(2, CACHE_URL=server.url)
    send(producer, range(0, REQUESTS // 2))
    wait_for(lambda: all(cache.mget([keys.command_key(f"u{n}")
                                     for n in range(REQUESTS // 2)])), 60, what="first half")
    time.sleep(1.5)  # a mark written after the first half
    cache.save()
    send(producer, range(REQUESTS // 2, REQUESTS))
    wait_for(lambda: all(cache.mget([keys.command_key(f"u{n}") for n in range(REQUESTS)])),
             60, what="second half")
    before = snapshot(cache)
    assert server.proc is not None
    server.proc.kill()
    server.proc.wait(timeout=10)
    server.start()  # from the snapshot: the second half's views are gone
    assert not cache.exists(keys.command_key(f"u{REQUESTS - 1}"))
    wait_for(lambda: snapshot(cache) == before, 30, every_s=0.2, what="the restored cache healed")
    log = worker.output()
    assert "another server" in log and '"healed": "since"' in log
    server.stop()


def send(producer: Any, numbers: range) -> None:
    for n in numbers:
        producer.send_task("commands.create_request", queue="commands.requests",
                           task_id=f"h{n}", kwargs={"template_id": "x86-small",
                                                    "max_number": 2})
        producer.send_task("commands.update_machine_status", queue="commands.machines",
                           task_id=f"u{n}", kwargs={"machine_id": f"m{n}", "status": "running",
                                                    "request_id": f"req-h{n}",
                                                    "metadata": {"name": f"host-{n}"}})
