"""python -m bench.feed: the provider contract's speed. Feed delivery latency (the worker's
commit of a request -> a provider's XREADGROUP returns its acquire event) at a steady rate.
(The command gateway's throughput: python -m bench.gateway.) Writes
bench/results-feed.json."""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import redis
from celery import Celery

from bench.common import (
    ROOT,
    fresh_store,
    machine,
    redis_server,
    stack_env,
    start_worker,
)

FEED = "hf:v1:feed"


def feed_latency(redis_url: str, env: dict[str, str], workdir: Path, rate: float,
                 duration_s: float) -> dict[str, Any]:
    client = redis.Redis.from_url(redis_url)
    worker = start_worker(env, 2, workdir / "worker.log", client)
    client.xgroup_create(FEED, "bench", id="$", mkstream=True)
    sent: dict[str, float] = {}
    received: dict[str, tuple[float, float]] = {}
    stop = threading.Event()

    def provider() -> None:
        reader = redis.Redis.from_url(redis_url)
        while not stop.is_set() or len(received) < len(sent):
            got: Any = reader.xreadgroup("bench", "p1", {FEED: ">"}, count=100, block=200)
            now = time.time()
            for _, entries in got or []:
                for entry_id, fields in entries:
                    event = json.loads(fields[b"event"])
                    received[event["request_id"]] = (now, event["created_at"])
                    reader.xack(FEED, "bench", entry_id)
            if stop.is_set() and time.time() > deadline:
                return

    deadline = time.time() + duration_s + 30
    thread = threading.Thread(target=provider, daemon=True)
    thread.start()
    producer = Celery("bench-feed", broker=redis_url, set_as_current=False)
    producer.conf.task_serializer = "json"
    interval, started = 1.0 / rate, time.perf_counter()
    n = 0
    while time.perf_counter() - started < duration_s:
        command_id = str(uuid.uuid4())
        sent[f"req-{command_id}"] = time.time()
        producer.send_task("commands.create_request", kwargs={
            "template_id": "x86-small", "max_number": 1}, task_id=command_id,
            queue="commands.requests")
        n += 1
        time.sleep(max(0.0, started + n * interval - time.perf_counter()))
    achieved = n / (time.perf_counter() - started)
    stop.set()
    thread.join(timeout=60)
    worker.stop()
    from_commit = [1000 * (got - committed) for got, committed in received.values()]
    from_send = [1000 * (received[r][0] - sent[r]) for r in received if r in sent]
    return {"asked_rate": rate, "achieved_rate": round(achieved, 1), "sent": len(sent),
            "received": len(received),
            "commit_to_provider_ms": _quantiles(from_commit),
            "send_to_provider_ms": _quantiles(from_send)}


def _quantiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    cuts = statistics.quantiles(values, n=100)
    return {"p50": round(cuts[49], 1), "p99": round(cuts[98], 1), "max": round(max(values), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.feed")
    parser.add_argument("--rate", type=float, default=100.0, help="requests/s for the latency")
    parser.add_argument("--seconds", type=float, default=15.0)
    args = parser.parse_args()
    results: dict[str, Any] = {"machine": machine()}
    with tempfile.TemporaryDirectory() as tmp, redis_server(Path(tmp)) as redis_url:
        workdir = Path(tmp)
        env = stack_env(redis_url, fresh_store("sqlite", workdir))
        results["feed"] = feed_latency(redis_url, env, workdir, args.rate, args.seconds)
    (ROOT / "bench" / "results-feed.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results["feed"], indent=2))


if __name__ == "__main__":
    main()
