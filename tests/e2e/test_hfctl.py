"""The front door: ``hfctl up --simulate`` brings the pair up (starting its own Redis), a
request sent with ``hfctl send`` reaches ``complete`` under ``hfctl status --wait``, and
Ctrl-C stops everything it started."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx

from tests.conftest import ROOT, free_port, unavailable, wait_for


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_up_send_status_wait_and_ctrl_c(tmp_path: Path) -> None:
    if shutil.which("redis-server") is None:
        unavailable("redis-server (hfctl up starts its own)")
    redis_port, query_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("REDIS_", "BROKER_", "CACHE_", "STORE_", "QUERY_"))}
    env.update({"REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
                "QUERY_PORT": str(query_port), "PYTHONPATH": str(ROOT)})
    hfctl = [sys.executable, "-m", "hfctl"]
    log = (tmp_path / "up.log").open("wb")
    up = subprocess.Popen([*hfctl, "up", "--simulate"], cwd=tmp_path, env=env, stdout=log,
                          stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: _templates(query_port), 60, what="hfctl up to serve templates")
        sent = subprocess.run([*hfctl, "send", "create-request", "--template-id", "x86-small",
                               "--max-number", "3"], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=60, check=True)
        request_id = json.loads(sent.stdout)["request_id"]
        status = subprocess.run([*hfctl, "status", request_id, "--wait", "--timeout", "60",
                                 "--json"], cwd=tmp_path, env=env, capture_output=True,
                                text=True, timeout=90, check=False)
        assert status.returncode == 0, status.stdout + status.stderr
        assert "complete" in status.stdout
        final = json.loads(status.stdout[status.stdout.index("{"):])
        assert final["status"] == "complete"
        assert [m["result"] for m in final["machines"]] == ["succeed"] * 3
        assert (tmp_path / "var" / "hostfactory.sqlite3").exists()
    finally:
        os.killpg(up.pid, signal.SIGINT)
        up.wait(timeout=60)
        log.close()
    assert up.returncode == 0, (tmp_path / "up.log").read_text()
    assert not port_open(query_port) and not port_open(redis_port)


def _templates(port: int) -> bool:
    try:
        return bool(httpx.get(f"http://127.0.0.1:{port}/templates", timeout=1)
                    .json()["total"] == 3)
    except (httpx.HTTPError, ValueError, KeyError):
        return False
