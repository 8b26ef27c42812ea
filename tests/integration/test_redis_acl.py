"""The Redis ACL users of deploy/redis/users.acl, as written, on a private redis-server: the
whole pair runs on them (worker, query service, gateway, simulated provider, the HostFactory
plugin as a producer), and each role is refused what it must not do: a producer cannot add
to the feed or read a view, a provider cannot add to the feed or write a view, a query
service can only read."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from shared import keys
from tests.conftest import ROOT, TEST_FEED_KEY, Proc, free_port, http_ok, wait_for
from tests.e2e.conftest import HFCTL, HostFactory

pytestmark = [pytest.mark.redis, pytest.mark.worker]
ACL = ROOT / "deploy" / "redis" / "users.acl"


@pytest.fixture
def acl_redis(tmp_path: Path) -> Iterator[int]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    acl = tmp_path / "users.acl"
    # The file as shipped, its placeholders as the passwords; comments are not ACL lines.
    acl.write_text("\n".join(line for line in ACL.read_text().splitlines()
                             if line and not line.startswith("#")) + "\n")
    port = free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                             "--save", "", "--appendonly", "no", "--aclfile", str(acl),
                             "--dir", str(tmp_path)], stdout=subprocess.DEVNULL)
    admin = redis.Redis(port=port, username="hf-worker", password="CHANGE-ME-worker")
    wait_for(lambda: _pings(admin), 10, what="the private redis-server")
    yield port
    proc.terminate()
    proc.wait(10)


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


def url(port: int, role: str) -> str:
    return f"redis://hf-{role}:CHANGE-ME-{role}@127.0.0.1:{port}/0"


def refused(client: redis.Redis, *command: object) -> bool:
    try:
        client.execute_command(*command)  # type: ignore[no-untyped-call]
    except redis.exceptions.NoPermissionError:
        return True
    return False


def test_the_pair_runs_on_its_acl_users_and_each_role_is_fenced(
        acl_redis: int, stack_env: dict[str, str], tmp_path: Path) -> None:
    port = acl_redis
    base = {k: v for k, v in stack_env.items() if not k.startswith(("REDIS_", "CACHE_"))}
    procs = []
    worker = Proc([sys.executable, "-m", "celery", "-A", "commands_worker.app", "worker",
                   "-Q", "commands.requests,commands.machines", "-c", "1",
                   "--without-gossip", "--without-mingle", "--without-heartbeat",
                   "-l", "warning"], {**base, "REDIS_URL": url(port, "worker")},
                  tmp_path / "worker.log").start()
    procs.append(worker)
    query_port, gateway_port = free_port(), free_port()
    query = f"http://127.0.0.1:{query_port}"
    procs.append(Proc([sys.executable, "-m", "queries_service"],
                      {**base, "REDIS_URL": url(port, "query"), "QUERY_PORT": str(query_port)},
                      tmp_path / "query.log").start())
    procs.append(Proc([sys.executable, "-m", "commands_worker.gateway"],
                      {**base, "REDIS_URL": url(port, "gateway"), "QUERY_URL": query,
                       "GATEWAY_PORT": str(gateway_port)}, tmp_path / "gateway.log").start())
    procs.append(Proc([sys.executable, "-m", "hfctl", "simulate", "--delay", "0.1"],
                      {**base, "REDIS_URL": url(port, "provider"), "QUERY_URL": query},
                      tmp_path / "simulator.log").start())
    try:
        wait_for(lambda: http_ok(f"{query}/readyz"), 30,
                 what="the query service ready (the worker's templates read)")
        hostfactory = HostFactory(tmp_path, {
            "PATH": "/usr/bin:/bin", "HFCQRS_HFCTL": str(HFCTL), "QUERY_URL": query,
            "BROKER_URL": url(port, "producer"), "HF_PROVIDER_LOGDIR": str(tmp_path / "hf")})
        rid = hostfactory.ok("requestMachines", {"template": {
            "templateId": "x86-small", "machineCount": 2}})["requestId"]
        done = hostfactory.until(rid, "complete", 30)
        assert [m["result"] for m in done["machines"]] == ["succeed", "succeed"]
        sent = httpx.post(f"http://127.0.0.1:{gateway_port}/commands/create-request",
                          json={"template_id": "x86-small", "max_number": 1},
                          headers={"Idempotency-Key": "acl-1"}, timeout=10)
        assert sent.status_code == 202, sent.text
        wait_for(lambda: httpx.get(f"{query}/requests/req-acl-1", timeout=5).status_code
                 == 200, 20, what="the gateway's command applied")
    finally:
        for proc in procs:
            proc.stop()
    assert "NOPERM" not in "".join(p.output() for p in procs)

    feed, view = keys.FEED_STREAM_KEY, keys.request_key(rid)
    producer = redis.Redis.from_url(url(port, "producer"))
    assert refused(producer, "XADD", feed, "*", "event", "{}")
    assert refused(producer, "GET", view)
    assert refused(producer, "LPUSH", "celery", "x")  # no queue but the contract's
    assert not refused(producer, "LPUSH", "commands.machines", "x")
    provider = redis.Redis.from_url(url(port, "provider"))
    assert refused(provider, "XADD", feed, "*", "event", "{}")
    assert refused(provider, "SET", keys.request_summary_key(rid), "{}")
    assert refused(provider, "DEL", feed)
    assert not refused(provider, "GET", keys.request_summary_key(rid))
    query_user = redis.Redis.from_url(url(port, "query"))
    for command in (("LPUSH", "commands.requests", "x"), ("SET", view, "x"),
                    ("XADD", feed, "*", "a", "b"), ("PUBLISH", keys.VIEWS_CHANNEL, "x")):
        assert refused(query_user, *command), command
    assert not refused(query_user, "GET", view)
    gateway = redis.Redis.from_url(url(port, "gateway"))
    assert refused(gateway, "SET", view, "x")
    assert TEST_FEED_KEY  # every process above signed or checked the feed with it
    assert re.search(r"user default off", ACL.read_text())
