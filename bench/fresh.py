"""python -m bench.fresh: the freshness targets of issue "Speed, third round", ``--runs``
times: the projection lag from outside at a steady 150 commands/s (``bench.lag``: a
long-poll opened before each command; SQLite, ``-c 2``, one query service), and
``GET /requests/{id}`` of a request with 50 machines against bare Starlette answering a body
of the same size (``wrk -c64``), each run with its own Redis. Writes
bench/results-fresh.json."""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from bench.__main__ import bench_lag, bench_queries
from bench.common import ROOT, machine, redis_server


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.fresh")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rate", type=float, default=150.0)
    parser.add_argument("--seconds", type=float, default=10.0, help="of steady load a run")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    args = parser.parse_args()
    runs: list[dict[str, Any]] = []
    for n in range(1, args.runs + 1):
        with tempfile.TemporaryDirectory(prefix="hf-fresh-") as tmp, \
                redis_server(Path(tmp)) as url:
            [lag] = bench_lag(url, [args.rate], args.seconds, Path(tmp))
            queries = bench_queries(url, args.connections, args.duration, Path(tmp))
        view, bare = queries["request_50_machines"], queries["baseline_hello_large"]
        runs.append({"lag": lag, "request_50_machines": view, "baseline_hello_large": bare})
        print(f"run {n}: lag at {lag['rate_per_s']}/s p50 {lag['p50_ms']} ms, p99 "
              f"{lag['p99_ms']} ms (sends p99 {lag['send_behind_schedule_p99_ms']} ms behind); "
              f"GET 50 machines {view['req_per_s']:,.0f} req/s, p99 {view['p99_ms']} ms / "
              f"bare {bare['req_per_s']:,.0f} = {view['ratio_to_baseline']}x", flush=True)
    (ROOT / "bench" / "results-fresh.json").write_text(json.dumps(
        {"machine": machine(), "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
