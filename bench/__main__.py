"""python -m bench: throughput, lag, latency and memory of the pair, each against a bare
baseline measured in the same run on the same machine. Writes bench/results.json and prints a
table. See bench/README.md."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

import redis

from bench.common import (
    QUEUES,
    ROOT,
    Group,
    _http_ok,
    bare_hello,
    drain_time,
    fill,
    free_port,
    fresh_store,
    machine,
    redis_server,
    stack_env,
    start_worker,
    wait_until,
    worker_argv,
    wrk,
)


def bench_bare(redis_url: str, n: int, concurrency: int, workdir: Path) -> dict[str, Any]:
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    fill(redis_url, [("bench.noop", "bench.noop", {"i": i}) for i in range(n)])
    env = {**os.environ, "REDIS_URL": redis_url, "PYTHONPATH": str(ROOT)}
    group = Group(worker_argv("bench.bare_celery", concurrency, "bench.noop"), env,
                  workdir / f"bare-{concurrency}.log")
    try:
        seconds = drain_time(client, ("bench.noop",), n)
    finally:
        rss = group.peak_rss_mb()
        group.stop()
    return {"tasks": n, "seconds": round(seconds, 3), "per_s": round(n / seconds, 1),
            "peak_rss_mb": rss}


def bench_commands(redis_url: str, store: str, n: int, k: int, concurrency: int,
                   workdir: Path) -> dict[str, Any]:
    """N CreateRequest, then N*k UpdateMachineStatus, drained until committed and visible."""
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    env = stack_env(redis_url, fresh_store(store, workdir))
    run = uuid.uuid4().hex[:6]
    creates = [("commands.create_request", "commands.requests",
                {"template_id": "x86-large", "max_number": k, "request_id": f"b{run}-{i}"})
               for i in range(n)]
    reports = [("commands.update_machine_status", "commands.machines",
                {"machine_id": f"b{run}-{i}-{m}", "status": "running",
                 "request_id": f"b{run}-{i}"}) for i in range(n) for m in range(k)]
    # The worker starts on empty queues (schema, templates), then is stopped, so each phase
    # below measures draining alone.
    group = start_worker(env, concurrency, workdir / f"ours-{store}-{concurrency}.log", client)
    group.stop()
    seconds = 0.0
    rss = 0.0
    for phase in (creates, reports):
        fill(redis_url, phase)
        group = Group(worker_argv("commands_worker.app", concurrency, ",".join(QUEUES)), env,
                      workdir / f"ours-{store}-{concurrency}.log")
        try:
            seconds += drain_time(client, QUEUES, len(phase))
        finally:
            rss = max(rss, group.peak_rss_mb())
            group.stop()
    complete = client.zcard("hf:v1:idx:requests:complete")
    if complete != n:
        raise SystemExit(f"bench: only {complete} of {n} requests complete and visible")
    total = n + n * k
    return {"commands": total, "seconds": round(seconds, 3), "per_s": round(total / seconds, 1),
            "peak_rss_mb": rss, "visible_complete_requests": complete}


def bench_lag(redis_url: str, rates: list[float], duration_s: float,
              workdir: Path) -> list[dict[str, Any]]:
    """Projection lag from outside (``bench.lag``): SQLite, ``-c 2``, one query service,
    at each steady rate."""
    from bench.lag import measure

    runs = []
    for rate in rates:
        client = redis.Redis.from_url(redis_url)
        client.flushdb()
        env = stack_env(redis_url, fresh_store("sqlite", workdir))
        group = start_worker(env, 2, workdir / "lag-worker.log", client)
        port = free_port()
        queries = Group([sys.executable, "-m", "queries_service"],
                        {**env, "QUERY_PORT": str(port)}, workdir / "lag-queries.log")
        url = f"http://127.0.0.1:{port}/readyz"
        wait_until(lambda: _http_ok(url), 30, "queries")  # noqa: B023
        try:
            runs.append(measure("127.0.0.1", port, redis_url, rate, duration_s))
        finally:
            queries.stop()
            group.stop()
        print(f"lag at {rate:.0f}/s: {runs[-1]}", flush=True)
    return runs


def bench_queries(redis_url: str, connections: int, duration_s: int,
                  workdir: Path) -> dict[str, Any]:
    from commands_worker import bootstrap
    from commands_worker.service_layer.executor import Envelope
    from shared.settings import Settings

    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    env = stack_env(redis_url, fresh_store("sqlite", workdir))
    deps = bootstrap.build(Settings.from_env(env))
    bootstrap.load_and_project_templates(deps)
    deps.projector.project(deps.executor.execute(Envelope(
        "commands.create_request", "q1", {"template_id": "x86-large", "max_number": 50})).docs)
    for m in range(50):
        deps.projector.project(deps.executor.execute(Envelope(
            "commands.update_machine_status", f"q1-{m}",
            {"machine_id": f"q1-m{m:02d}", "status": "running", "request_id": "req-q1",
             "metadata": {"name": f"host-{m}", "private_ip": f"192.0.2.{m + 1}",
                          "instance_type": "m5.2xlarge", "price_type": "spot"}})).docs)
    summary_bytes = len(client.get("hf:v1:request-summary:req-q1") or b"")
    results: dict[str, Any] = {"connections": connections, "duration_s": duration_s,
                               "request_view_bytes": len(client.get("hf:v1:request:req-q1")
                                                         or b""),
                               "summary_view_bytes": summary_bytes}
    # Two baselines: a body the size of the 50-machine view, and of the summary view.
    for name, size in (("baseline_hello_large", results["request_view_bytes"]),
                       ("baseline_hello", summary_bytes)):
        results[name] = bare_hello(env, size, connections, duration_s, workdir)

    port = free_port()
    ours = Group([sys.executable, "-m", "queries_service"],
                 {**env, "QUERY_PORT": str(port), "QUERY_WORKERS": "1"},
                 workdir / "queries.log")
    base = f"http://127.0.0.1:{port}"
    wait_until(lambda: _http_ok(f"{base}/healthz"), 30, "the query service")
    for name, path in (("request_50_machines", "/requests/req-q1"),
                       ("request_summary", "/requests/req-q1?include_machines=false"),
                       ("templates", "/templates")):
        results[name] = wrk(base + path, connections, duration_s)
        baseline = "baseline_hello_large" if name == "request_50_machines" else "baseline_hello"
        results[name]["baseline"] = baseline
        results[name]["ratio_to_baseline"] = round(
            results[name]["req_per_s"] / results[baseline]["req_per_s"], 3)
    results["query_service_peak_rss_mb"] = ours.peak_rss_mb()
    ours.stop()
    return results


def bench_listings(redis_url: str, connections: int, duration_s: int, workdir: Path,
                   stored: int) -> dict[str, Any]:
    """``GET /requests?limit=50`` and ``?status=complete&limit=50`` with ``stored`` requests
    (two running machines each) in the cache, against bare Starlette answering a body of the
    same size, in the same run."""
    import httpx

    from bench.hostfactory import populate

    redis.Redis.from_url(redis_url).flushdb()
    env = stack_env(redis_url, fresh_store("sqlite", workdir))
    populate(env, stored, 2)
    port = free_port()
    ours = Group([sys.executable, "-m", "queries_service"],
                 {**env, "QUERY_PORT": str(port), "QUERY_WORKERS": "1"},
                 workdir / f"listings-{stored}.log")
    base = f"http://127.0.0.1:{port}"
    wait_until(lambda: _http_ok(f"{base}/healthz"), 30, "the query service")
    results: dict[str, Any] = {"stored_requests": stored}
    for name, path in (("list_50", "/requests?limit=50"),
                       ("list_50_complete", "/requests?status=complete&limit=50")):
        size = len(httpx.get(base + path).content)
        run = wrk(base + path, connections, duration_s)
        baseline = bare_hello(env, size, connections, duration_s, workdir)
        run.update(body_bytes=size, baseline_req_per_s=baseline["req_per_s"],
                   ratio_to_baseline=round(run["req_per_s"] / baseline["req_per_s"], 3))
        results[name] = run
    results["query_service_peak_rss_mb"] = ours.peak_rss_mb()
    ours.stop()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--n", type=int, default=1000, help="CreateRequest commands per run")
    parser.add_argument("--k", type=int, default=2, help="machine reports per request")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--skip-postgres", action="store_true")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results.json"))
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("bench: wrk is needed (apt-get install wrk)")
    results: dict[str, Any] = {"machine": machine(), "n": args.n, "k": args.k}
    total = args.n * (1 + args.k)
    with tempfile.TemporaryDirectory(prefix="hf-bench-") as tmp, redis_server(Path(tmp)) as url:
        workdir = Path(tmp)
        results["celery_noop"] = {c: bench_bare(url, total, c, workdir) for c in (1, 2)}
        results["commands"] = {}
        for store in ("sqlite", *(() if args.skip_postgres else ("postgres",))):
            for c in (1, 2):
                run = bench_commands(url, store, args.n, args.k, c, workdir)
                run["ratio_to_noop"] = round(run["per_s"] / results["celery_noop"][c]["per_s"],
                                             3)
                results["commands"][f"{store}-c{c}"] = run
                print(f"{store} -c {c}: {run}", flush=True)
        half = results["commands"]["sqlite-c2"]["per_s"] / 2
        results["lag"] = bench_lag(url, [150.0, 380.0, half], 10, workdir)
        results["queries"] = bench_queries(url, args.connections, args.duration, workdir)
        results["listings"] = [bench_listings(url, args.connections, args.duration, workdir,
                                              stored) for stored in (100, 9000)]
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print_table(results)


def print_table(r: dict[str, Any]) -> None:
    m = r["machine"]
    print(f"\nmachine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, Python "
          f"{m['python']}, Redis {m['redis']}, {m['date']}")
    print(f"\n{'commands (N=' + str(r['n']) + ', k=' + str(r['k']) + ')':<28}"
          f"{'cmds/s':>10}{'noop/s':>10}{'ratio':>8}{'peak RSS MB':>13}")
    for name, run in r["commands"].items():
        c = int(name[-1])
        print(f"{name:<28}{run['per_s']:>10}{r['celery_noop'][c]['per_s']:>10}"
              f"{run['ratio_to_noop']:>8}{run['peak_rss_mb']:>13}")
    for lag in r["lag"]:
        print(f"\nlag from outside at {lag['rate_per_s']}/s (asked {lag['target_rate_per_s']}, "
              f"{lag['commands']} commands, sends p99 {lag['send_behind_schedule_p99_ms']} ms "
              f"behind): p50 {lag['p50_ms']} ms, p99 {lag['p99_ms']} ms, max {lag['max_ms']} ms")
    q = r["queries"]
    print(f"\n{'queries (' + str(q['connections']) + ' conns)':<28}{'req/s':>10}{'ratio':>8}"
          f"{'p50 ms':>9}{'p99 ms':>9}")
    for name in ("baseline_hello_large", "baseline_hello"):
        base = q[name]
        label = f"hello {base['body_bytes']} B"
        print(f"{label:<28}{base['req_per_s']:>10}{1.0:>8}{base['p50_ms']:>9}"
              f"{base['p99_ms']:>9}")
    for name in ("request_50_machines", "request_summary", "templates"):
        s = q[name]
        print(f"{name:<28}{s['req_per_s']:>10}{s['ratio_to_baseline']:>8}{s['p50_ms']:>9}"
              f"{s['p99_ms']:>9}")
    print(f"query service peak RSS {q['query_service_peak_rss_mb']} MB")
    print(f"\n{'listings':<34}{'req/s':>9}{'hello/s':>9}{'ratio':>8}{'p50 ms':>9}{'p99 ms':>9}")
    for listing in r.get("listings", []):
        for name in ("list_50", "list_50_complete"):
            s = listing[name]
            label = f"{name}, {listing['stored_requests']} stored"
            print(f"{label:<34}{s['req_per_s']:>9}{s['baseline_req_per_s']:>9}"
                  f"{s['ratio_to_baseline']:>8}{s['p50_ms']:>9}{s['p99_ms']:>9}")


if __name__ == "__main__":
    main()
