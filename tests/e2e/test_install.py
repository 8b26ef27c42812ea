"""What the README tells a user to install runs as installed: the core from a fresh venv,
without the test extras (no editable install, no PYTHONPATH onto the checkout), then the
image's extras (``.[postgres,aws]``) on top of it.

The core: a worker and a query service started from the venv's own entry points, the five
plugin scripts answering through the venv's ``hfctl``, a request applied. The extras: the
same worker on PostgreSQL, and the AWS provider's entry point importing boto3.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from shared import keys
from tests.conftest import ROOT, Proc, free_port, http_ok, wait_for

pytestmark = [pytest.mark.redis, pytest.mark.worker]
SCRIPTS = ROOT / "hostfactory" / "scripts"
OPS = ("getAvailableTemplates", "requestMachines", "requestReturnMachines",
       "getRequestStatus", "getReturnRequests")


def _pip(venv: Path, *args: str) -> None:
    # --no-compile: the same files installed, without compiling every installed module to
    # bytecode up front (a third of the install's time; what runs is compiled as it loads).
    done = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--no-compile",
                           "--disable-pip-version-check", *args],
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``python3 -m venv v && v/bin/pip install .`` from a copy of the source tree (so the
    build cannot read anything the checkout has beside the package)."""
    where = tmp_path_factory.mktemp("install")
    source = where / "src"
    subprocess.run(["cp", "-r", str(ROOT), str(source)], check=True)
    for junk in (".venv", ".git", "var"):
        subprocess.run(["rm", "-rf", str(source / junk)], check=True)
    env_dir = where / "v"
    subprocess.run([sys.executable, "-m", "venv", str(env_dir)], check=True)
    _pip(env_dir, str(source))
    return env_dir


def _clean_env(venv: Path, **extra: str) -> dict[str, str]:
    """No PYTHONPATH, no dev venv on PATH: only what the install put in the venv."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("REDIS_", "BROKER_", "CACHE_", "STORE_", "QUERY_", "PYTHON",
                                "VIRTUAL_ENV", "FEED_"))}
    env["PATH"] = f"{venv / 'bin'}:/usr/bin:/bin"
    env.update(extra)
    return env


def _run_script(op: str, body: object, tmp: Path, env: dict[str, str]) -> tuple[int, Any]:
    path = tmp / f"{op}.json"
    path.write_text(json.dumps(body))
    done = subprocess.run([str(SCRIPTS / f"{op}.sh"), "-f", str(path)], env=env,
                          capture_output=True, timeout=60, check=False, cwd=tmp)
    lines = done.stdout.decode().splitlines()
    assert len(lines) == 1, (done.stdout, done.stderr)
    return done.returncode, json.loads(lines[0])


@contextlib.contextmanager
def _pair(venv: Path, tmp: Path, env: dict[str, str]) -> Iterator[str]:
    # cwd is a scratch folder: ``-m`` must not find the checkout's packages.
    worker = Proc([str(venv / "bin" / "celery"), "-A", "commands_worker.app", "worker",
                   "-Q", "commands.requests,commands.machines", "-c", "1",
                   "--without-gossip", "--without-mingle", "--without-heartbeat",
                   "-l", "warning"], env, tmp / "worker.log", cwd=tmp).start()
    port = free_port()
    query = Proc([str(venv / "bin" / "python"), "-m", "queries_service"],
                 {**env, "QUERY_PORT": str(port)}, tmp / "query.log", cwd=tmp).start()
    try:
        cache = redis.Redis.from_url(env["REDIS_URL"])
        popen = worker.proc
        assert popen is not None
        wait_for(lambda: cache.exists(keys.TEMPLATES_KEY) or popen.poll() is not None,
                 60, what="the installed worker to load its templates")
        assert popen.poll() is None, worker.output()
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: http_ok(f"{url}/healthz"), 30, what="the installed query service")
        yield url
    finally:
        worker.stop()
        query.stop()


def _smoke(venv: Path, tmp: Path, redis_url: str, **extra: str) -> None:
    env = _clean_env(venv, **{"REDIS_URL": redis_url,
                              "STORE_URL": f"sqlite:///{tmp / 's.sqlite3'}",
                              "WORKER_METRICS_PORT": "0", **extra})
    with _pair(venv, tmp, env) as url:
        plugin = {**env, "QUERY_URL": url, "HFCQRS_HFCTL": str(venv / "bin" / "hfctl"),
                  "HF_PROVIDER_LOGDIR": str(tmp / "logs")}
        code, answer = _run_script("getAvailableTemplates", {}, tmp, plugin)
        assert code == 0 and answer["templates"], answer
        template = answer["templates"][0]["templateId"]
        code, sent = _run_script("requestMachines", {"template": {
            "templateId": template, "machineCount": 1}}, tmp, plugin)
        assert code == 0, sent
        request_id = sent["requestId"]

        def pending() -> Any:
            _, status = _run_script("getRequestStatus",
                                    {"requests": [{"requestId": request_id}]}, tmp, plugin)
            entry = status["requests"][0]
            return entry["message"] != "accepted; the command worker has not applied it yet" \
                and entry["status"] == "running" and entry

        wait_for(pending, 30, every_s=0.3, what="the installed worker to apply the request")
        code, answer = _run_script("getReturnRequests", {"machines": []}, tmp, plugin)
        assert code == 0 and answer["requests"] == [], answer
        code, answer = _run_script("requestReturnMachines", {"machines": [
            {"name": "nobody.example"}]}, tmp, plugin)
        assert code == 0 and answer["requestId"].startswith("ret-"), answer


def test_the_core_install_runs_the_pair_and_the_plugin(venv: Path, tmp_path: Path,
                                                       redis_url: str) -> None:
    done = subprocess.run([str(venv / "bin" / "pip"), "list", "--format=json"],
                          capture_output=True, text=True, check=True)
    installed = {p["name"].lower() for p in json.loads(done.stdout)}
    assert not installed & {"pytest", "httpx", "moto", "boto3", "psycopg"}, installed
    _smoke(venv, tmp_path, redis_url)


def test_the_images_extras_run_on_postgresql_and_aws(venv: Path, tmp_path: Path,
                                                     redis_url: str,
                                                     postgres_url: str) -> None:
    source = venv.parent / "src"
    _pip(venv, f"{source}[postgres,aws]")
    _smoke(venv, tmp_path, redis_url, STORE_URL=postgres_url)
    done = subprocess.run([str(venv / "bin" / "hfctl"), "provider", "aws", "--help"],
                          env=_clean_env(venv), capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    check = subprocess.run([str(venv / "bin" / "python"), "-c",
                            "import hfctl.aws.provider, boto3, psycopg"],
                           env=_clean_env(venv), capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stderr
