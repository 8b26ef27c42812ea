"""A read cache behind Redis Sentinel: the worker writes to the Sentinel's primary, the query
service finds it through the Sentinel, and after a failover both follow with no restart."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import redis

from tests.conftest import Proc, free_port, wait_for
from tests.integration.test_replicas import RedisServer, _healthy, create, get, report


def test_cache_behind_sentinel_survives_a_failover(tmp_path: Path, start_worker: Any,
                                                   stack_env: dict[str, str], redis_url: str,
                                                   producer: Any) -> None:
    for sub in ("a", "b", "s"):
        (tmp_path / sub).mkdir()
    first = RedisServer(tmp_path / "a").start()
    second = RedisServer(tmp_path / "b", "--replicaof", "127.0.0.1", str(first.port)).start()
    sentinel_port = free_port()
    conf = tmp_path / "s" / "sentinel.conf"
    conf.write_text(f"port {sentinel_port}\nbind 127.0.0.1\ndir {tmp_path / 's'}\n"
                    f"sentinel monitor hfcache 127.0.0.1 {first.port} 1\n"
                    "sentinel down-after-milliseconds hfcache 1000\n"
                    "sentinel failover-timeout hfcache 5000\n")
    sentinel = subprocess.Popen(["redis-server", str(conf), "--sentinel"],
                                stdout=subprocess.DEVNULL)
    service: Proc | None = None
    try:
        sentinel_client = redis.Redis(port=sentinel_port)
        wait_for(lambda: _replicas_known(sentinel_client), 20, what="the sentinel")
        cache_url = f"redis+sentinel://127.0.0.1:{sentinel_port}/hfcache/0"
        # The broker stays on the machine's Redis; only the read cache is Sentinel-managed.
        env = {"REDIS_URL": redis_url, "CACHE_URL": cache_url}
        start_worker(2, **env)
        port = free_port()
        service = Proc([sys.executable, "-m", "queries_service"],
                       {**stack_env, **env, "QUERY_PORT": str(port)},
                       tmp_path / "queries-sentinel.log").start()
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: _healthy(base), 20, what="query service")
        request_id = create(producer)
        wait_for(lambda: get(base, f"/requests/{request_id}").status_code == 200, 20,
                 what="a view written and read through the sentinel")
        assert redis.Redis(port=first.port).exists(f"hf:v1:request:{request_id}")

        sentinel_client.execute_command(  # type: ignore[no-untyped-call]
            "SENTINEL", "FAILOVER", "hfcache")
        # Until the sentinel has demoted the old primary, both accept writes: a write there
        # is lost when it resyncs (Redis replication is asynchronous; see the README).
        wait_for(lambda: redis.Redis(port=second.port).info("replication")["role"] == "master"
                 and redis.Redis(port=first.port).info("replication")["role"] == "slave",
                 30, what="the failover")
        report(producer, request_id, f"{request_id}-a", "running")
        wait_for(lambda: _version(base, request_id) == 2, 30,
                 what="a write after the failover, seen with no restart")
        promoted = redis.Redis(port=second.port)
        assert promoted.exists(f"hf:v1:machine:{request_id}-a"), (
            promoted.keys("hf:v1:machine:*"), redis.Redis(port=first.port).keys("hf:v1:m*"))
    finally:
        if service is not None:
            service.stop()  # also when the test fails: no query service left running
        sentinel.terminate()
        sentinel.wait(timeout=10)
        second.stop()
        first.stop()


def _replicas_known(client: redis.Redis) -> bool:
    try:
        return bool(client.execute_command(  # type: ignore[no-untyped-call]
            "SENTINEL", "REPLICAS", "hfcache"))
    except redis.RedisError:
        return False


def _version(base: str, request_id: str) -> int:
    try:
        response = httpx.get(f"{base}/requests/{request_id}", timeout=5)
        return int(response.json().get("version", 0)) if response.status_code == 200 else 0
    except (httpx.HTTPError, ValueError):
        return 0
