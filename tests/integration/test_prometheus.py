"""A real Prometheus server (Debian's package) scrapes a real worker and two query services
every second while a scripted workload runs: the series it stores hold exactly the workload's
counts, and the alert rules of deploy/ fire and resolve (their ``for`` shortened to 2 s)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ROOT, Proc, free_port, http_ok, unavailable, wait_for

RULES = ROOT / "deploy" / "prometheus" / "rules.yml"


class Prometheus:
    def __init__(self, base: str) -> None:
        self.base = base

    def value(self, query: str) -> float | None:
        answer = httpx.get(f"{self.base}/api/v1/query", params={"query": query}, timeout=5)
        result = answer.json()["data"]["result"]
        return float(result[0]["value"][1]) if result else None

    def firing(self) -> set[tuple[str, str]]:
        alerts = httpx.get(f"{self.base}/api/v1/alerts", timeout=5).json()["data"]["alerts"]
        return {(a["labels"]["alertname"], a["labels"].get("instance", ""))
                for a in alerts if a["state"] == "firing"}


def _query_service(stack_env: dict[str, str], tmp_path: Path, port: int, name: str) -> Proc:
    proc = Proc([sys.executable, "-m", "queries_service"],
                {**stack_env, "QUERY_PORT": str(port)}, tmp_path / f"{name}.log").start()
    wait_for(lambda: http_ok(f"http://127.0.0.1:{port}/healthz"), 20, what=name)
    return proc


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    """What a test starts, stopped whatever the test's outcome."""
    started: list[Proc] = []
    yield started
    for proc in started:
        proc.stop()


@pytest.fixture
def prometheus_bin() -> str:
    found = shutil.which("prometheus")
    if found is None:
        unavailable("prometheus (Debian package prometheus)")
    return str(found)


def test_prometheus_sees_the_exact_counts_and_the_alerts(
        prometheus_bin: str, start_worker: Callable[..., Proc], stack_env: dict[str, str],
        tmp_path: Path, producer: Any, procs: list[Proc]) -> None:
    worker_port, q1_port, q2_port, prom_port = (free_port() for _ in range(4))
    start_worker(2, WORKER_METRICS_PORT=str(worker_port))
    q1 = _query_service(stack_env, tmp_path, q1_port, "q1")
    q2 = _query_service(stack_env, tmp_path, q2_port, "q2")
    procs += [q1, q2]
    rules = re.sub(r"for: \w+", "for: 2s", RULES.read_text())
    (tmp_path / "rules.yml").write_text(rules)
    (tmp_path / "prometheus.yml").write_text(json.dumps({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(tmp_path / "rules.yml")],
        "scrape_configs": [
            {"job_name": "hostfactory-worker",
             "static_configs": [{"targets": [f"127.0.0.1:{worker_port}"]}]},
            {"job_name": "hostfactory-query", "static_configs": [{"targets": [
                f"127.0.0.1:{q1_port}", f"127.0.0.1:{q2_port}"]}]}]}))
    prom = Proc([prometheus_bin, f"--config.file={tmp_path / 'prometheus.yml'}",
                 f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                 f"--web.listen-address=127.0.0.1:{prom_port}"], dict(stack_env),
                tmp_path / "prometheus.log").start()
    procs.append(prom)
    p = Prometheus(f"http://127.0.0.1:{prom_port}")
    wait_for(lambda: http_ok(f"{p.base}/-/ready"), 30, what="prometheus")
    wait_for(lambda: p.value('sum(up{job=~"hostfactory-.*"})') == 3, 30, every_s=0.5,
             what="three targets up")

    # The workload: 5 requests, 2 refused, 1 redelivered, 3 machine reports.
    ids = [str(uuid.uuid4()) for _ in range(5)]
    for task_id in ids:
        producer.send_task("commands.create_request", queue="commands.requests",
                           kwargs={"template_id": "x86-small", "max_number": 3},
                           task_id=task_id)
    for _ in range(2):
        producer.send_task("commands.create_request", queue="commands.requests",
                           kwargs={"template_id": "no-such", "max_number": 1})
    producer.send_task("commands.create_request", queue="commands.requests",
                       kwargs={"template_id": "x86-small", "max_number": 3}, task_id=ids[0])
    for n in range(3):
        producer.send_task("commands.update_machine_status", queue="commands.machines",
                           kwargs={"machine_id": f"m{n}", "status": "running",
                                   "request_id": f"req-{ids[0]}"})
    for _ in range(7):
        assert httpx.get(f"http://127.0.0.1:{q1_port}/requests/req-{ids[1]}").status_code in (
            200, 404)

    def counts() -> dict[str, float | None]:
        return {o: p.value(f'sum(hf_worker_commands_total{{outcome="{o}"}})')
                for o in ("applied", "rejected", "duplicate")}

    wait_for(lambda: counts() == {"applied": 8, "rejected": 2, "duplicate": 1}, 60,
             every_s=0.5, what=f"the workload's counts (last: {counts()})")
    wait_for(lambda: p.value("hf_worker_dead_letters_open") == 2, 30, every_s=0.5,
             what="two open dead letters")
    served = (f'sum(hf_query_requests_total{{instance="127.0.0.1:{q1_port}",'
              f'route="get_request"}})')
    wait_for(lambda: p.value(served) == 7, 30, every_s=0.5,  # q1's next scrape
             what="the seven answers of q1")
    assert p.value('sum(hf_worker_batch_size_count)') is not None
    assert p.value("hf_worker_templates_version") == 1
    wait_for(lambda: ("HfDeadLettersGrowing", f"127.0.0.1:{worker_port}") in p.firing(), 30,
             every_s=0.5, what="HfDeadLettersGrowing to fire")

    q2.stop()  # a replica goes away: its alert fires, then resolves when it is back
    down = ("HfQueryServiceDown", f"127.0.0.1:{q2_port}")
    wait_for(lambda: down in p.firing(), 30, every_s=0.5, what="HfQueryServiceDown to fire")
    q2 = _query_service(stack_env, tmp_path, q2_port, "q2-again")
    procs.append(q2)
    wait_for(lambda: down not in p.firing(), 30, every_s=0.5, what="it to resolve")
    # hfctl stats reads the same endpoints: one screen.
    stats = subprocess.run(
        [sys.executable, "-m", "hfctl", "stats", "--worker",
         f"http://127.0.0.1:{worker_port}/metrics", "--query", f"http://127.0.0.1:{q1_port}",
         "--every", "0.5"], env=stack_env, cwd=ROOT, capture_output=True, text=True,
        timeout=60, check=False)
    assert stats.returncode == 0, stats.stderr
    assert "targets up 2/2" in stats.stdout
    assert re.search(r"queue commands.requests\s+waiting\s+0", stats.stdout), stats.stdout
    assert "dead letters open 2" in stats.stdout
