"""HostFactory as the end-to-end tests drive it: the five scripts, an input file each."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.conftest import ROOT, Proc, free_port, http_ok, wait_for

SCRIPTS = ROOT / "hostfactory" / "scripts"
HFCTL = Path(sys.executable).parent / "hfctl"


class HostFactory:
    """What HostFactory does: writes an input file, runs OP.sh -f FILE, reads stdout."""

    def __init__(self, tmp_path: Path, env: dict[str, str]) -> None:
        self.tmp = tmp_path
        self.env = env
        self.calls = itertools.count()

    def call(self, op: str, body: object, **env: str) -> tuple[int, dict[str, Any]]:
        path = self.tmp / f"input-{next(self.calls)}.json"
        path.write_text(json.dumps(body))
        done = subprocess.run([str(SCRIPTS / f"{op}.sh"), "-f", str(path)],
                              env={**self.env, **env}, capture_output=True, timeout=60,
                              check=False)
        lines = done.stdout.decode().splitlines()
        assert len(lines) == 1, (done.stdout, done.stderr)  # exactly one object, nothing else
        answer = json.loads(lines[0])
        assert isinstance(answer, dict)
        assert done.returncode in (0, 1), done.stderr
        if done.returncode == 1:
            assert set(answer) == {"message"} and answer["message"]
        return done.returncode, answer

    def ok(self, op: str, body: object, **env: str) -> dict[str, Any]:
        code, answer = self.call(op, body, **env)
        assert code == 0, answer
        return answer

    def status(self, *ids: str) -> list[dict[str, Any]]:
        answer = self.ok("getRequestStatus", {"requests": [{"requestId": i} for i in ids]})
        requests: list[dict[str, Any]] = answer["requests"]
        return requests

    def until(self, request_id: str, status: str, timeout_s: float = 30) -> dict[str, Any]:
        found: dict[str, Any] = wait_for(
            lambda: next((r for r in self.status(request_id) if r["status"] == status), None),
            timeout_s, every_s=0.2, what=f"{request_id} to be {status}")
        return found


@pytest.fixture
def hostfactory(stack_env: dict[str, str], query_url: str, tmp_path: Path) -> HostFactory:
    confdir, logdir, workdir = (tmp_path / d for d in ("conf", "log", "work"))
    for d in (confdir, logdir, workdir):
        d.mkdir()
    # Settings from the provider's conf file; the environment HostFactory gives holds none.
    (confdir / "hostfactory-cqrs.json").write_text(json.dumps(
        {"QUERY_URL": query_url,
         "BROKER_URL": stack_env.get("BROKER_URL", stack_env["REDIS_URL"])}))
    env = {"PATH": "/usr/bin:/bin", "HFCQRS_HFCTL": str(HFCTL),
           "HF_PROVIDER_NAME": "hfcqrs", "HF_PROVIDER_CONFDIR": str(confdir),
           "HF_PROVIDER_LOGDIR": str(logdir), "HF_PROVIDER_WORKDIR": str(workdir)}
    return HostFactory(tmp_path, env)


@pytest.fixture
def gateway_url(stack_env: dict[str, str], tmp_path: Path, query_url: str) -> Iterator[str]:
    """The command gateway as its own process, answering with the query service's URL."""
    port = free_port()
    proc = Proc([sys.executable, "-m", "commands_worker.gateway"],
                {**stack_env, "GATEWAY_PORT": str(port), "QUERY_URL": query_url},
                tmp_path / "gateway.log").start()
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: http_ok(f"{url}/healthz"), 20, what="the gateway")
    yield url
    proc.stop()


def reading_the_feed(redis_url: str, group: str) -> None:
    """Wait until a provider process has made its consumer group: the group starts at the
    feed's end, so an event published before it exists would never reach it. (Its consumer
    appears only once a read returns, not while it blocks on an empty feed.)"""
    feed = redis.Redis.from_url(redis_url)
    wait_for(lambda: any(g["name"] == group.encode()
                         for g in (feed.xinfo_groups("hf:v1:feed")
                                   if feed.exists("hf:v1:feed") else [])),
             30, what=f"the {group} group on the feed")
    feed.close()
