"""python -m bench.hostfactory: what HostFactory waits for. Wall time of each provider-plugin
script as HostFactory runs it (a new process per call: ``OP.sh -f input.json``), with
getRequestStatus for 1, 100 and 1,000 request ids of 10 machines each; and the query
service's throughput for a 100-id status batch against a bare Starlette answering a body of
the same size, in the same run. Writes bench/results-hostfactory.json."""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

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

SCRIPTS = ROOT / "hostfactory" / "scripts"
HFCTL = Path(sys.executable).parent / "hfctl"


def populate(env: dict[str, str], requests: int, machines: int) -> list[str]:
    """``requests`` acquire requests of ``machines`` running machines each, applied by the
    worker's own executor and projected, as a worker would have left them."""
    from commands_worker import bootstrap
    from commands_worker.service_layer.executor import Envelope
    from shared.settings import Settings

    deps = bootstrap.build(Settings.from_env(env))
    bootstrap.load_and_project_templates(deps)
    ids = [f"req-b{n}" for n in range(requests)]
    creates = [Envelope("commands.create_request", f"b{n}",
                        {"template_id": "x86-large", "max_number": machines})
               for n in range(requests)]
    deps.projector.project(deps.executor.execute_batch(creates).docs)
    reports = [Envelope("commands.update_machine_status", f"b{n}-{m}", {
        "machine_id": f"i-b{n}-{m}", "status": "running", "request_id": ids[n],
        "metadata": {"name": f"ip-10-{n // 250}-{n % 250}-{m}.example.internal",
                     "private_ip": f"10.{n // 250}.{n % 250}.{m}", "instance_type": "m5.large",
                     "price_type": "ondemand", "instance_tags": "team=hpc;cost=grid"}})
        for n in range(requests) for m in range(machines)]
    for first in range(0, len(reports), 500):
        deps.projector.project(deps.executor.execute_batch(reports[first:first + 500]).docs)
    return ids


def timed(op: str, body: object, env: dict[str, str], workdir: Path, runs: int) -> dict[str, Any]:
    path = workdir / f"{op}-input.json"
    path.write_text(json.dumps(body))
    walls = []
    for _ in range(runs):
        started = time.perf_counter()
        done = subprocess.run([str(SCRIPTS / f"{op}.sh"), "-f", str(path)], env=env,
                              capture_output=True, check=False)
        walls.append(time.perf_counter() - started)
        if done.returncode != 0:
            raise SystemExit(f"bench: {op} failed: {done.stdout!r} {done.stderr[-500:]!r}")
    return {"median_s": round(statistics.median(walls), 3), "max_s": round(max(walls), 3),
            "runs": runs, "stdout_bytes": len(done.stdout)}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.hostfactory")
    parser.add_argument("--runs", type=int, default=10, help="calls per script")
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    results: dict[str, Any] = {"machine": machine(), "runs": args.runs}
    with tempfile.TemporaryDirectory() as tmp, redis_server(Path(tmp)) as redis_url:
        workdir = Path(tmp)
        env = stack_env(redis_url, fresh_store("sqlite", workdir))
        started = time.perf_counter()
        ids = populate(env, 1000, 10)
        results["populate_s"] = round(time.perf_counter() - started, 1)
        port = free_port()
        query = Group([sys.executable, "-m", "queries_service"],
                      {**env, "QUERY_PORT": str(port)}, workdir / "queries.log")
        base = f"http://127.0.0.1:{port}"
        wait_until(lambda: _http_ok(f"{base}/healthz"), 30, "the query service")
        gateway_port = free_port()
        gateway = Group([sys.executable, "-m", "commands_worker.gateway"],
                        {**env, "GATEWAY_PORT": str(gateway_port)}, workdir / "gateway.log")
        gateway_url = f"http://127.0.0.1:{gateway_port}"
        wait_until(lambda: _http_ok(f"{gateway_url}/healthz"), 30, "the gateway")
        plugin_env = {"PATH": "/usr/bin:/bin", "HFCQRS_HFCTL": str(HFCTL),
                      "QUERY_URL": base, "BROKER_URL": redis_url,
                      "HF_PROVIDER_LOGDIR": str(workdir / "hf-log"), "LOG_LEVEL": "WARNING"}
        hosts = [{"name": f"ip-10-0-{n}-0.example.internal", "machineId": f"i-b{n}-0"}
                 for n in range(100)]
        calls: list[tuple[str, str, object, dict[str, str]]] = [
            ("getAvailableTemplates", "getAvailableTemplates", {}, {}),
            *((f"getRequestStatus_{k}", "getRequestStatus",
               {"requests": [{"requestId": i} for i in ids[:k]]}, {}) for k in (1, 100, 1000)),
            ("getReturnRequests_100_hosts", "getReturnRequests", {"machines": hosts}, {}),
            *((f"{op}{suffix}", op, body, more)
              for suffix, more in (("_broker", {}), ("_gateway", {"GATEWAY_URL": gateway_url}))
              for op, body in (
                  ("requestMachines",
                   {"template": {"templateId": "x86-small", "machineCount": 3}}),
                  ("requestReturnMachines", {"machines": hosts[:2]}))),
        ]
        results["scripts"] = {name: timed(op, body, {**plugin_env, **more}, workdir, args.runs)
                              for name, op, body, more in calls}
        gateway.stop()
        results["throughput"] = status_batch_throughput(base, ids[:100], env, workdir, args)
        query.stop()
    out = ROOT / "bench" / "results-hostfactory.json"
    out.write_text(json.dumps(results, indent=2))
    print(json.dumps({k: results[k] for k in ("scripts", "throughput")}, indent=2))


def status_batch_throughput(base: str, ids: list[str], env: dict[str, str], workdir: Path,
                            args: argparse.Namespace) -> dict[str, Any]:
    import httpx

    body = json.dumps({"requests": [{"requestId": i} for i in ids]})
    answer = httpx.post(f"{base}/hostfactory/request-status", content=body).content
    script = post_script(workdir, body)
    ours = wrk(f"{base}/hostfactory/request-status", args.connections, args.duration, script)
    baseline = bare_hello(env, len(answer), args.connections, args.duration, workdir)
    return {"answer_bytes": len(answer), "status_batch_100": ours,
            "baseline_hello_same_size": baseline,
            "ratio_to_baseline": round(ours["req_per_s"] / baseline["req_per_s"], 3)}


if __name__ == "__main__":
    main()
