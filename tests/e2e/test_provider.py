"""The README's provider, run as written: two instances of it (redis-py and the standard
library only, nothing of this project) drive 100 acquire -> return cycles through the provider
feed and the command gateway, over a real worker, query service and gateway; one instance is
killed with SIGKILL midway, and the other finishes its work."""

from __future__ import annotations

import re
import socket
import sys
from pathlib import Path
from typing import Any

import httpx
import redis

from tests.conftest import ROOT, Proc, wait_for

REQUESTS, MACHINES = 100, 2


def readme_provider() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Write a provider", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match is not None, "the README's provider is gone"
    return match.group(1)


def test_two_provider_instances_one_killed(worker: Proc, query_url: str, gateway_url: str,
                                           stack_env: dict[str, str], rclient: redis.Redis,
                                           tmp_path: Path) -> None:
    script = tmp_path / "provider.py"
    script.write_text(readme_provider())
    env = {"PATH": "/usr/bin:/bin", "CACHE_URL": stack_env["REDIS_URL"],
           "GATEWAY_URL": gateway_url, "PROVIDER_GROUP": "readme", "CLAIM_IDLE_MS": "2000",
           "FEED_SIGNING_KEY": stack_env["FEED_SIGNING_KEY"]}
    # The first instance's gateway never answers: it takes events and hangs on them, so it
    # surely dies holding some.
    hole = socket.create_server(("127.0.0.1", 0))
    stuck = {**env, "GATEWAY_URL": f"http://127.0.0.1:{hole.getsockname()[1]}"}
    providers = [Proc([sys.executable, str(script)], e, tmp_path / f"provider-{n}.log")
                 .start() for n, e in enumerate((stuck, env))]
    wait_for(lambda: rclient.exists("hf:v1:feed") and rclient.xinfo_groups("hf:v1:feed"), 20,
             what="the provider's consumer group")
    http = httpx.Client(timeout=10)
    ids = []
    for n in range(REQUESTS):
        sent = http.post(f"{gateway_url}/commands/create-request", json={
            "template_id": "x86-small", "max_number": MACHINES},
            headers={"Idempotency-Key": f"order-{n}"})
        assert sent.status_code == 202, sent.text
        ids.append(sent.json()["request_id"])
        if n == 30:
            held_by = f"{socket.gethostname()}-{providers[0].proc.pid if providers[0].proc else 0}"
            wait_for(lambda: _held(rclient, held_by) > 0, 20,  # noqa: B023
                     what="the first instance to hold events")
            providers[0].kill()  # SIGKILL, events in hand
    views = wait_for(lambda: _all(http, query_url, ids, "complete"), 90, every_s=0.5,
                     what="every request complete")
    for view in views:
        machines = [{"name": m["name"], "machine_id": m["machine_id"]} for m in view["machines"]]
        sent = http.post(f"{gateway_url}/commands/return-machines", json={"machines": machines},
                         headers={"Idempotency-Key": f"return-{view['request_id']}"})
        assert sent.status_code == 202, sent.text
        view["return_id"] = sent.json()["request_id"]
    wait_for(lambda: _all(http, query_url, [v["return_id"] for v in views], "complete"), 90,
             every_s=0.5, what="every return request complete")
    # Each machine changed exactly three times (running, linked to its return request,
    # terminated), whoever handled the event and however often it was delivered.
    machine_ids = [m["machine_id"] for v in views for m in v["machines"]]
    assert len(machine_ids) == REQUESTS * MACHINES
    for machine_id in machine_ids:
        machine = http.get(f"{query_url}/machines/{machine_id}").json()
        assert (machine["status"], machine["version"]) == ("terminated", 3), machine
    pending: Any = rclient.xpending("hf:v1:feed", "readme")
    assert pending["pending"] == 0  # every event acknowledged
    providers[1].stop()
    hole.close()


def _held(client: redis.Redis, consumer: str) -> int:
    """Events delivered to ``consumer`` and not acknowledged."""
    consumers: Any = client.xinfo_consumers("hf:v1:feed", "readme")
    return sum(int(c["pending"]) for c in consumers if c["name"].decode() == consumer)


def _all(http: httpx.Client, query_url: str, ids: list[str],
         status: str) -> list[dict[str, Any]] | None:
    views = []
    for request_id in ids:
        view = http.get(f"{query_url}/requests/{request_id}")
        if view.status_code != 200 or view.json()["status"] != status:
            return None
        views.append(view.json())
    return views
