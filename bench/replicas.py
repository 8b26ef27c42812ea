"""python -m bench.replicas: the query side at scale. Long-poll wake-up latency after a
projection, idle long-polls held by one replica process and its memory, and req/s of one
service reading the primary vs a replica. Starts its own Redis primary and replica."""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import redis

from bench.common import (
    Group,
    _http_ok,
    free_port,
    redis_server,
    stack_env,
    wait_until,
    wrk,
)
from commands_worker.adapters.projector import Projector
from commands_worker.domain.model import Machine, Request
from commands_worker.service_layer.documents import request_docs


def project(client: redis.Redis, version: int, machines: int = 5) -> None:
    request = Request("lp", "x86-large", 50, {}, "in_progress", 1.0, float(version),
                      version=version, seq=1)
    ms = [Machine(f"lp-{i}", "lp", "running", 1.0, 1.0, 1.0, version=1)
          for i in range(machines)]
    Projector(client).project(request_docs(request, ms))


def start_service(env: dict[str, str], workdir: Path, name: str) -> tuple[Group, str]:
    port = free_port()
    group = Group([sys.executable, "-m", "queries_service"],
                  {**env, "QUERY_PORT": str(port), "QUERY_WORKERS": "1"}, workdir / name)
    base = f"http://127.0.0.1:{port}"
    wait_until(lambda: _http_ok(f"{base}/healthz"), 30, "the query service")
    return group, base


def wake_up_latency(primary: redis.Redis, base: str, samples: int) -> dict[str, Any]:
    delays = []
    with httpx.Client(base_url=base, timeout=30) as http:
        for version in range(2, samples + 2):
            box: dict[str, float] = {}

            async def one(v: int = version, out: dict[str, float] = box) -> None:
                async with httpx.AsyncClient(base_url=base, timeout=30) as client:
                    task = asyncio.ensure_future(client.get(
                        "/requests/lp", params={"min_version": v, "wait": 20}))
                    await asyncio.sleep(0.05)
                    out["projected"] = time.perf_counter()
                    await asyncio.to_thread(project, primary, v)
                    response = await task
                    out["answered"] = time.perf_counter()
                    assert response.json()["version"] == v

            asyncio.run(one())
            delays.append((box["answered"] - box["projected"]) * 1000)
        del http
    delays.sort()
    return {"samples": samples, "median_ms": round(statistics.median(delays), 2),
            "p99_ms": round(delays[int(len(delays) * 0.99) - 1], 2),
            "max_ms": round(delays[-1], 2)}


def idle_long_polls(primary: redis.Redis, base: str, group: Group, count: int,
                    version: int) -> dict[str, Any]:
    """``count`` long-polls held on raw sockets (an HTTP client library would be the slow
    part here), all woken by one projection."""
    rss_before = group.peak_rss_mb()
    host, port = base.removeprefix("http://").split(":")
    request = (f"GET /requests/lp?min_version={version}&wait=50 HTTP/1.1\r\n"
               f"Host: {host}\r\nConnection: close\r\n\r\n").encode()

    async def poll() -> bytes:
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(request)
        await writer.drain()
        answer = await reader.read()
        writer.close()
        return answer

    async def many() -> dict[str, Any]:
        tasks = [asyncio.ensure_future(poll()) for _ in range(count)]
        await asyncio.sleep(max(3.0, count / 500))
        held = sum(not t.done() for t in tasks)
        rss_held = group.peak_rss_mb()
        started = time.perf_counter()
        await asyncio.to_thread(project, primary, version)
        answers = await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - started
        fresh = sum(f'"version":{version},'.encode() in a for a in answers)
        return {"long_polls": count, "held": held, "all_answered_s": round(elapsed, 3),
                "answered_fresh": fresh, "peak_rss_mb_before": rss_before,
                "peak_rss_mb_holding": rss_held}

    return asyncio.run(many())


def main() -> None:
    samples = int(os.environ.get("SAMPLES", "200"))
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="hf-replicas-") as tmp, \
            redis_server(Path(tmp)) as primary_url:
        workdir = Path(tmp)
        primary = redis.Redis.from_url(primary_url)
        replica_port = free_port()
        (workdir / "replica").mkdir()
        replica_proc = subprocess.Popen(
            ["redis-server", "--port", str(replica_port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(workdir / "replica"),
             "--replicaof", "127.0.0.1", primary_url.rsplit(":", 1)[1].split("/")[0]],
            stdout=subprocess.DEVNULL)
        replica = redis.Redis(port=replica_port)
        wait_until(lambda: _link_up(replica), 20, "replication")
        project(primary, 1, machines=50)
        env = stack_env(primary_url, "sqlite:////nonexistent")
        on_replica = {**env, "CACHE_READ_URL": f"redis://127.0.0.1:{replica_port}/0"}
        group, base = start_service(on_replica, workdir, "q-replica.log")
        results["wake_up"] = wake_up_latency(primary, base, samples)
        version = samples + 2
        for count in (1000, 5000):
            results[f"idle_{count}"] = idle_long_polls(primary, base, group, count, version)
            version += 1
        group.stop()
        for name, service_env in (("on_primary", env), ("on_replica", on_replica)):
            group, base = start_service(service_env, workdir, f"q-{name}.log")
            results[name] = {
                "request_view": wrk(f"{base}/requests/lp", 64, 5),
                "requests_page": wrk(f"{base}/requests?limit=50", 64, 5),
            }
            group.stop()
        replica_proc.terminate()
    print(json.dumps(results, indent=2))


def _link_up(client: redis.Redis) -> bool:
    try:
        return client.info("replication").get("master_link_status") == "up"
    except redis.RedisError:
        return False


if __name__ == "__main__":
    main()
