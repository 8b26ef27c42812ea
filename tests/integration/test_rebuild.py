"""The read cache is disposable: wiped, it is rebuilt from the store to the same bytes."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import redis

from commands_worker import bootstrap
from commands_worker.service_layer.executor import Envelope
from shared.settings import Settings
from tests.conftest import ROOT

CREATE, UPDATE = "commands.create_request", "commands.update_machine_status"


def snapshot(client: redis.Redis) -> dict[bytes, Any]:
    views: dict[bytes, Any] = {}
    for key in client.scan_iter(match="hf:v1:*"):
        kind = client.type(key)
        # The feed's markers say what was published, not what is: a rebuild publishes the
        # open work again (tests/integration/test_feed.py). The templates status is what the
        # worker's last load made of the file, not a view of the store: the next load writes
        # it again. The cache mark and heal lock are the worker's bookkeeping, not views.
        if kind == b"string" and not key.startswith((b"hf:v1:broker", b"hf:v1:feed",
                                                     b"hf:v1:templates-status",
                                                     b"hf:v1:cache-")):
            views[key] = client.get(key)
        elif kind == b"zset":
            views[key] = client.zrange(key, 0, -1, withscores=True)
    return views


def test_wiped_cache_is_rebuilt_byte_for_byte(stack_env: dict[str, str],
                                               rclient: redis.Redis) -> None:
    d = bootstrap.build(Settings.from_env(stack_env))
    bootstrap.load_and_project_templates(d)
    for n in range(30):
        execution = d.executor.execute(Envelope(CREATE, f"c{n}", {
            "template_id": "x86-small", "max_number": 2, "attributes": {"n": n}}))
        d.projector.project(execution.docs)
        for m, status in enumerate(("running", "failed" if n % 3 == 0 else "running")):
            execution = d.executor.execute(Envelope(UPDATE, f"u{n}-{m}", {
                "machine_id": f"m{n}-{m}", "status": status, "request_id": f"req-c{n}",
                "metadata": {"name": f"host-{n}-{m}"}}))
            d.projector.project(execution.docs)
    # Return requests: their own views, and new versions of the acquire requests' views.
    d.projector.project(d.executor.execute(Envelope("commands.return_machines", "r1", {
        "machines": [{"name": "host-1-0"}, {"name": "host-2-0", "machine_id": "m2-0"},
                     {"name": "ghost"}]})).docs)
    d.projector.project(d.executor.execute(Envelope(UPDATE, "t1", {
        "machine_id": "m1-0", "status": "terminated"})).docs)
    d.projector.project(d.executor.execute(Envelope(CREATE, "bad", {
        "template_id": "nope", "max_number": 1})).docs)
    before = snapshot(rclient)
    assert len(before) > 100

    rclient.flushdb()  # Redis restarted without persistence
    result = subprocess.run([sys.executable, "-m", "hfctl", "rebuild-read-model"],
                            env=stack_env, cwd=ROOT, capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    after = snapshot(rclient)
    assert after.keys() == before.keys()
    for key, value in before.items():
        assert after[key] == value, key
    assert rclient.ttl(b"hf:v1:command:bad") > 0
    assert b"hf:v1:request:ret-r1" in after and b"hf:v1:machine-name:host-2-1" in after
