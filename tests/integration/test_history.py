"""A request's history: every command that touched it or its machines, in the order applied,
with its outcome, the request's version after it, and the reason of a refusal; kept by the
projector, served by the query service, printed by hfctl, and rebuilt from the store."""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any

import redis
from starlette.testclient import TestClient

from commands_worker import bootstrap
from commands_worker.service_layer.executor import Envelope
from queries_service.app import create_app
from shared.settings import Settings
from tests.conftest import ROOT

CREATE, UPDATE = "commands.create_request", "commands.update_machine_status"


def test_history_in_order_and_through_a_rebuild(stack_env: dict[str, str],
                                                 rclient: redis.Redis) -> None:
    d = bootstrap.build(Settings.from_env(stack_env))
    bootstrap.load_and_project_templates(d)
    now = time.time()
    sent: list[tuple[str, str, dict[str, Any]]] = [
        (CREATE, "c1", {"template_id": "x86-small", "max_number": 3, "request_id": "r1"}),
        *((UPDATE, f"p{n}", {"machine_id": f"m{n}", "status": "pending", "request_id": "r1",
                              "observed_at": now - 10}) for n in range(3)),
        (UPDATE, "p0", {"machine_id": "m0", "status": "pending", "request_id": "r1",
                        "observed_at": now - 10}),                       # redelivered
        (UPDATE, "run0", {"machine_id": "m0", "status": "running", "observed_at": now}),
        (UPDATE, "old0", {"machine_id": "m0", "status": "pending", "observed_at": now - 5}),
        (UPDATE, "bad0", {"machine_id": "m0", "status": "running", "request_id": "other"}),
    ]
    for task, task_id, kwargs in sent:
        d.projector.project(d.executor.execute(Envelope(task, task_id, kwargs)).docs)
    with TestClient(create_app(Settings.from_env(stack_env))) as client:
        history = client.get("/requests/r1/history").json()
        assert client.get("/requests/nobody/history").status_code == 404
    steps = [(e["command_id"], e["outcome"], e["version_after"]) for e in history["entries"]]
    assert steps == [("c1", "applied", 1), ("p0", "applied", 2), ("p1", "applied", 3),
                     ("p2", "applied", 4), ("p0", "duplicate", None), ("run0", "applied", 5),
                     ("old0", "superseded", None), ("bad0", "rejected", None)]
    assert "machine_request_mismatch" in history["entries"][-1]["reason"]

    before = rclient.zrange("hf:v1:history:r1", 0, -1)
    rclient.flushdb()
    rebuilt = subprocess.run([sys.executable, "-m", "hfctl", "rebuild-read-model"],
                             env=stack_env, cwd=ROOT, capture_output=True, text=True,
                             timeout=120, check=False)
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert rclient.zrange("hf:v1:history:r1", 0, -1) == before

    printed = subprocess.run([sys.executable, "-m", "hfctl", "status", "r1", "--history"],
                             env={**stack_env, "QUERY_URL": "http://127.0.0.1:1"}, cwd=ROOT,
                             capture_output=True, text=True, timeout=60, check=False)
    assert printed.returncode != 0  # no query service there: it says so, exit non-zero
