"""python -m bench.rabbitmq: the worker on RabbitMQ quorum queues (a private three-node
cluster), against a bare Celery worker draining no-op tasks from a quorum queue of the same
cluster in the same run; and what publisher confirms cost a producer. See bench/README.md."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import redis
from kombu import Connection, Exchange, Queue

from bench.common import (
    QUEUES,
    ROOT,
    Group,
    fresh_store,
    machine,
    redis_server,
    stack_env,
    wait_until,
    worker_argv,
)
from shared import brokers, keys
from shared.client import CommandClient
from tests.rabbit import RabbitCluster


def fill(url: str, queue: Queue, messages: list[tuple[str, dict[str, Any]]]) -> None:
    """Celery protocol 2 messages, published with confirms, before a worker runs."""
    with Connection(url, transport_options={"confirm_publish": True}) as connection:
        producer = connection.Producer()
        for task, kwargs in messages:
            task_id = str(uuid.uuid4())
            producer.publish([[], kwargs, {}], exchange=queue.exchange,
                             routing_key=queue.routing_key, declare=[queue],
                             headers={"task": task, "id": task_id, "lang": "py"},
                             serializer="json", delivery_mode=2)


class Ready:
    """Messages ready on a queue (a passive declare on one kept connection)."""

    def __init__(self, url: str) -> None:
        self.connection = Connection(url)
        self.channel = self.connection.channel()

    def __call__(self, queue: str) -> int:
        return int(self.channel.queue_declare(queue=queue, passive=True)[1])

    def close(self) -> None:
        self.connection.release()


def first_taken(url: str, queue: str, total: int) -> float:
    """When a worker took the first message: the clock starts there, as in bench/common.py."""
    ready = Ready(url)
    try:
        wait_until(lambda: ready(queue) < total, 60, "the first message taken", every_s=0.002)
        return time.perf_counter()
    finally:
        ready.close()


def bench_bare(url: str, total: int, concurrency: int, workdir: Path) -> dict[str, Any]:
    queue = Queue("bench.noop", Exchange("bench.noop", "direct"), routing_key="bench.noop",
                  queue_arguments={"x-queue-type": "quorum"})
    fill(url, queue, [("bench.noop", {"i": i}) for i in range(total)])
    done_dir = workdir / f"done-{uuid.uuid4().hex[:6]}"
    done_dir.mkdir()
    env = {**os.environ, "BROKER_URL": url, "PYTHONPATH": str(ROOT),
           "BENCH_DONE_DIR": str(done_dir)}
    group = Group(worker_argv("bench.bare_celery", concurrency, "bench.noop"), env,
                  workdir / f"bare-{concurrency}.log")

    def finished() -> int:
        return sum(int(p.read_text() or 0) for p in done_dir.iterdir())

    try:
        first = first_taken(url, "bench.noop", total)
        wait_until(lambda: finished() >= total, 600, "every task", every_s=0.005)
        seconds = time.perf_counter() - first
    finally:
        group.stop()
    return {"tasks": total, "seconds": round(seconds, 3), "per_s": round(total / seconds, 1)}


def bench_commands(url: str, redis_url: str, store: str, n: int, k: int, concurrency: int,
                   workdir: Path) -> dict[str, Any]:
    """N CreateRequest, then N*k UpdateMachineStatus, each phase filled first and drained
    until every command is visible in the read cache."""
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    env = {**stack_env(redis_url, fresh_store(store, workdir)), "BROKER_URL": url}
    requests_q, machines_q = brokers.command_queues(url)
    run = uuid.uuid4().hex[:6]
    creates = [("commands.create_request", {"template_id": "x86-large", "max_number": k,
                                            "request_id": f"b{run}-{i}"}) for i in range(n)]
    reports = [("commands.update_machine_status",
                {"machine_id": f"b{run}-{i}-{m}", "status": "running",
                 "request_id": f"b{run}-{i}"}) for i in range(n) for m in range(k)]
    # The worker starts on empty queues first (schema, templates), then is stopped, so each
    # phase below measures draining alone.
    group = Group(worker_argv("commands_worker.app", concurrency, ",".join(QUEUES)), env,
                  workdir / f"ours-{store}-{concurrency}.log")
    wait_until(lambda: client.exists(keys.TEMPLATES_KEY), 60, "the worker")
    group.stop()
    seconds = 0.0
    for phase, queue, done in (
            (creates, requests_q, lambda: client.zcard(keys.REQUESTS_INDEX_KEY) >= n),
            (reports, machines_q,
             lambda: client.zcard(keys.requests_by_status_key("complete")) >= n)):
        fill(url, queue, phase)
        group = Group(worker_argv("commands_worker.app", concurrency, ",".join(QUEUES)), env,
                      workdir / f"ours-{store}-{concurrency}.log")
        try:
            started = first_taken(url, queue.name, len(phase))
            wait_until(done, 600, "every command visible", every_s=0.005)
            seconds += time.perf_counter() - started
        finally:
            group.stop()
    total = n + n * k
    return {"commands": total, "seconds": round(seconds, 3), "per_s": round(total / seconds, 1)}


def bench_confirms(url: str, sends: int) -> dict[str, Any]:
    """One producer sending CreateRequest one by one: with publisher confirms (what every
    producer of this project does) and without (what a plain Celery client does)."""
    out: dict[str, Any] = {}
    for confirmed in (False, True):
        client = CommandClient(url)
        if not confirmed:
            client.app.conf.broker_transport_options = {}
            client.options = {}
        latencies = []
        client.create_request("x86-small", 1)  # connect, declare
        started = time.perf_counter()
        for _ in range(sends):
            one = time.perf_counter()
            client.create_request("x86-small", 1)
            latencies.append((time.perf_counter() - one) * 1000)
        seconds = time.perf_counter() - started
        client.close()
        latencies.sort()
        out["confirmed" if confirmed else "unconfirmed"] = {
            "sends_per_s": round(sends / seconds, 1),
            "p50_ms": round(statistics.median(latencies), 3),
            "p99_ms": round(latencies[int(len(latencies) * 0.99) - 1], 3)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.rabbitmq", description=__doc__)
    parser.add_argument("--n", type=int, default=1000, help="CreateRequest commands per run")
    parser.add_argument("--k", type=int, default=2, help="machine reports per request")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--skip-postgres", action="store_true")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results-rabbitmq.json"))
    args = parser.parse_args()
    results: dict[str, Any] = {"machine": machine(), "n": args.n, "k": args.k, "runs": []}
    cluster = RabbitCluster(3).start()
    try:
        with tempfile.TemporaryDirectory(prefix="hf-bench-") as tmp, \
                redis_server(Path(tmp)) as redis_url:
            workdir = Path(tmp)
            for _ in range(args.runs):
                cluster.purge()
                one: dict[str, Any] = {"bare": {}, "commands": {}}
                total = args.n * (1 + args.k)
                for c in (1, 2):
                    one["bare"][c] = bench_bare(cluster.url, total, c, workdir)
                for store in ("sqlite", *(() if args.skip_postgres else ("postgres",))):
                    for c in (1, 2):
                        ours = bench_commands(cluster.url, redis_url, store, args.n, args.k,
                                              c, workdir)
                        ours["ratio_to_bare"] = round(ours["per_s"] / one["bare"][c]["per_s"],
                                                      3)
                        one["commands"][f"{store}-c{c}"] = ours
                one["confirms"] = bench_confirms(cluster.url, 1000)
                print(json.dumps(one), flush=True)
                results["runs"].append(one)
    finally:
        cluster.stop()
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print_table(results)


def print_table(r: dict[str, Any]) -> None:
    print(f"\nRabbitMQ 3-node cluster, quorum queues (N={r['n']}, k={r['k']}), "
          f"{len(r['runs'])} runs")
    for name in r["runs"][0]["commands"]:
        c = name[-1]
        cells = [f"{run['commands'][name]['per_s']:.0f} / {run['bare'][int(c)]['per_s']:.0f}"
                 f" = {run['commands'][name]['ratio_to_bare']:.2f}x" for run in r["runs"]]
        print(f"{name:<12} " + " | ".join(cells))
    for kind in ("unconfirmed", "confirmed"):
        cells = [f"{run['confirms'][kind]['sends_per_s']:.0f}/s p50 "
                 f"{run['confirms'][kind]['p50_ms']} ms p99 {run['confirms'][kind]['p99_ms']} ms"
                 for run in r["runs"]]
        print(f"producer, {kind:<12} " + " | ".join(cells))


if __name__ == "__main__":
    main()
