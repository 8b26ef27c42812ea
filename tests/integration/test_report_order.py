"""Reports that wait for their request keep the order they came in. 200 machines each report
``pending`` then ``running``, 5 ms apart, before their request's CreateRequest is applied
(it is held back a second); each report waits on its own jittered retry timer, so a
``running`` often comes back before its ``pending``. Every report is applied, or superseded
where overtaken (the older report), never rejected or dead-lettered, and every machine ends
``running``: on SQLite and PostgreSQL, two rounds each."""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.conftest import Proc, wait_for

pytestmark = [pytest.mark.redis, pytest.mark.worker]
MACHINES, ROUNDS = 200, 2


@pytest.fixture(params=["sqlite", "postgres"])
def store_env(request: pytest.FixtureRequest, stack_env: dict[str, str]) -> dict[str, str]:
    if request.param == "postgres":
        return {"STORE_URL": request.getfixturevalue("postgres_url")}
    return {}


def _outcomes(r: redis.Redis, ids: list[str]) -> dict[str, str] | None:
    docs: Any = r.mget([f"hf:v1:command:{i}" for i in ids])
    if not all(docs):
        return None
    return {i: json.loads(d)["outcome"] for i, d in zip(ids, docs, strict=True)}


def test_reports_that_wait_keep_their_order(store_env: dict[str, str], templates_file: Path,
                                            start_worker: Callable[..., Proc],
                                            rclient: redis.Redis, producer: Any) -> None:
    templates_file.write_text(json.dumps({"templates": [{
        "templateId": "many", "maxNumber": -1,
        "attributes": {"type": "X86_64", "ncpus": 1, "nram": 1024}}]}))
    start_worker(2, **store_env)
    for round_ in range(ROUNDS):
        request_id = f"req-order-{round_}"
        ids = []
        for m in range(MACHINES):
            for status in ("pending", "running"):
                command_id = f"o{round_}-{m}-{status}"
                producer.send_task("commands.update_machine_status", queue="commands.machines",
                                   task_id=command_id, kwargs={
                                       "machine_id": f"{request_id}-m{m}", "status": status,
                                       "request_id": request_id})
                ids.append(command_id)
                time.sleep(0.005)
        time.sleep(1.0)  # the request is late: every report above waits for it
        producer.send_task("commands.create_request", queue="commands.requests",
                           kwargs={"template_id": "many", "max_number": MACHINES,
                                   "request_id": request_id})
        outcomes: dict[str, str] = wait_for(functools.partial(_outcomes, rclient, ids), 60,
                                            every_s=0.2,
                                            what=f"round {round_}: every report's outcome")
        assert set(outcomes.values()) <= {"applied", "superseded"}, {
            i: o for i, o in outcomes.items() if o not in ("applied", "superseded")}
        assert all(outcomes[f"o{round_}-{m}-running"] == "applied" for m in range(MACHINES))
        view = json.loads(rclient.get(f"hf:v1:request:{request_id}") or b"{}")
        assert [m["status"] for m in view["machines"]] == ["running"] * MACHINES
    assert rclient.llen("hf:v1:broker:dead-letter-inbox") == 0
