"""python -m bench.query_ab --before REV: the query service's hot paths, this tree against
revision REV (checked out with ``git worktree`` into a temporary directory), in one run,
alternating A B A B so the machine's drift hits both alike. A change to what the service
counts per answer must cost no more than the run-to-run noise; this says whether it does."""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import redis

from bench.common import ROOT, Group, _http_ok, free_port, redis_server, wait_until, wrk

PATHS = {"request_50_machines": "/requests/req-ab", "summary":
         "/requests/req-ab?include_machines=false", "templates": "/templates"}


def _project(redis_url: str, tree: Path) -> None:
    """A request of 50 machines and the templates, written by the worker's own code."""
    code = (
        "from commands_worker.adapters.projector import Projector\n"
        "from commands_worker.domain.model import Machine, Request, Template\n"
        "from commands_worker.service_layer import documents as d\n"
        "import redis, sys\n"
        "r = redis.Redis.from_url(sys.argv[1])\n"
        "req = Request('req-ab', 'x86-large', 50, {}, 'complete', 1.0, 2.0, version=51, seq=1)\n"
        "ms = [Machine(f'm{n:02d}', 'req-ab', 'running', 1.0, 1.0, 1.0, version=1, details={"
        "'name': f'host-{n}', 'private_ip': f'192.0.2.{n + 1}', 'instance_type': 'm5.2xlarge'})"
        " for n in range(50)]\n"
        "t = Template('x86-large', 50, {}, {'templateId': 'x86-large', 'maxNumber': 50})\n"
        "Projector(r).project([*d.request_docs(req, ms), d.templates_doc([t], 1)])\n")
    subprocess.run([sys.executable, "-c", code, redis_url], cwd=tree, check=True,
                   env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"})


def _serve(tree: Path, redis_url: str, workdir: Path, name: str) -> tuple[Group, str]:
    port = free_port()
    group = Group([sys.executable, "-m", "queries_service"],
                  {"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin", "REDIS_URL": redis_url,
                   "QUERY_PORT": str(port), "LOG_LEVEL": "WARNING"}, workdir / f"{name}.log")
    base = f"http://127.0.0.1:{port}"
    wait_until(lambda: _http_ok(f"{base}/healthz"), 30, f"the {name} query service")
    return group, base


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.query_ab")
    parser.add_argument("--before", required=True, help="the git revision to compare with")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--duration", type=int, default=8)
    parser.add_argument("--connections", type=int, default=64)
    args = parser.parse_args()
    results: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory() as tmp, redis_server(Path(tmp)) as redis_url:
        workdir = Path(tmp)
        before = workdir / "before"
        subprocess.run(["git", "worktree", "add", "--detach", str(before), args.before],
                       cwd=ROOT, check=True, capture_output=True)
        try:
            redis.Redis.from_url(redis_url).flushdb()
            _project(redis_url, ROOT)
            for round_ in range(args.rounds):
                for name, tree in (("before", before), ("after", ROOT)):
                    group, base = _serve(tree, redis_url, workdir, f"{name}-{round_}")
                    for path_name, path in PATHS.items():
                        wrk(base + path, args.connections, 2)  # warm the in-process views
                        got = wrk(base + path, args.connections, args.duration)
                        results.setdefault(path_name, {}).setdefault(name, []).append(
                            got["req_per_s"])
                    group.stop()
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(before)], cwd=ROOT,
                           check=False, capture_output=True)
    summary: dict[str, Any] = {}
    for path_name, runs in results.items():
        b, a = statistics.mean(runs["before"]), statistics.mean(runs["after"])
        summary[path_name] = {"before": runs["before"], "after": runs["after"],
                              "change_pct": round(100 * (a - b) / b, 1)}
    print(json.dumps({"before": args.before, **summary}, indent=2))


if __name__ == "__main__":
    main()
