"""python -m bench.gateway: the command gateway's POST throughput against bare Starlette
answering a body of the same size, in the same run, ``--runs`` times (ours, then bare, in
turn). Each run starts its own Redis; every POST must be a message in the queue afterwards
(the bench fails otherwise). With ``--amqp URL`` the gateway publishes to that RabbitMQ
instead (with confirms). Writes bench/results-gateway.json."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import redis

from bench.common import (
    ROOT,
    Group,
    _http_ok,
    bare_hello,
    free_port,
    fresh_store,
    machine,
    post_script,
    redis_server,
    stack_env,
    wait_until,
    wrk,
)

BODY = json.dumps({"template_id": "x86-small", "max_number": 2})


def one_run(args: argparse.Namespace) -> dict[str, Any]:
    import httpx

    with tempfile.TemporaryDirectory() as tmp, redis_server(Path(tmp)) as redis_url:
        workdir = Path(tmp)
        env = stack_env(redis_url, fresh_store("sqlite", workdir))
        if args.amqp:
            env["BROKER_URL"] = args.amqp
        port = free_port()
        gateway = Group([sys.executable, "-m", "commands_worker.gateway"],
                        {**env, "GATEWAY_PORT": str(port), "GATEWAY_WORKERS": "1"},
                        workdir / "gateway.log")
        base = f"http://127.0.0.1:{port}"
        wait_until(lambda: _http_ok(f"{base}/healthz"), 30, "the gateway")
        answer = httpx.post(f"{base}/commands/create-request", content=BODY,
                            headers={"content-type": "application/json"})
        if answer.status_code != 202:
            raise SystemExit(f"bench: the gateway answered {answer.status_code}: {answer.text}")
        script = post_script(workdir, BODY)
        ours = wrk(f"{base}/commands/create-request", args.connections, args.duration, script)
        ours["peak_rss_mb"] = gateway.peak_rss_mb()
        gateway.stop()
        if not args.amqp:
            queued = redis.Redis.from_url(redis_url).llen("commands.requests")
            ours["messages_in_queue"] = queued
            # wrk counts answers it read; a POST it cut at its deadline may be queued too
            if ours["non_2xx"] or queued < ours["requests"]:
                raise SystemExit(f"bench: {ours['requests']} answered, {queued} queued, "
                                 f"{ours['non_2xx']} not accepted")
        baseline = bare_hello(env, len(answer.content), args.connections, args.duration,
                              workdir)
        return {"gateway_post": ours, "baseline_hello_same_size": baseline,
                "ratio": round(ours["req_per_s"] / baseline["req_per_s"], 3)}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.gateway")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--amqp", help="publish to this RabbitMQ instead of the run's Redis")
    args = parser.parse_args()
    runs = [one_run(args) for _ in range(args.runs)]
    for i, run in enumerate(runs, 1):
        ours, bare = run["gateway_post"], run["baseline_hello_same_size"]
        print(f"run {i}: gateway {ours['req_per_s']:,.0f} req/s (p50 {ours['p50']}, p99 "
              f"{ours['p99']}, {ours['peak_rss_mb']} MB) / bare {bare['req_per_s']:,.0f} "
              f"= {run['ratio']}x")
    (ROOT / "bench" / "results-gateway.json").write_text(json.dumps(
        {"machine": machine(), "broker": "amqp" if args.amqp else "redis", "runs": runs},
        indent=2))


if __name__ == "__main__":
    main()
