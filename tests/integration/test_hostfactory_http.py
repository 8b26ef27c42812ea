"""HostFactory's answers over HTTP (``/hostfactory/...``), from views the real executor and
projector wrote into a real Redis: shapes, per-type results, unknown and just-sent ids,
deadlines, getReturnRequests by id and by name."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from starlette.testclient import TestClient

from commands_worker.service_layer.executor import Envelope
from queries_service.app import create_app
from shared import hostfactory as hf
from shared.settings import Settings
from tests.inprocess import InProcessWorker

MACHINE_KEYS = {"machineId", "name", "result", "status", "privateIpAddress", "launchtime",
                "message", "priceType", "instanceType", "instanceTags", "cloudHostId"}


@pytest.fixture
def client(redis_url: str) -> Iterator[TestClient]:
    settings = Settings.from_env({"REDIS_URL": redis_url, "REQUEST_TIMEOUT_S": "600"})
    with TestClient(create_app(settings)) as test_client:
        yield test_client


Pair = InProcessWorker


def up(pair: Pair, request_id: str, *names: str) -> None:
    for n, name in enumerate(names):
        pair.report(f"i-{name}", "running", request_id, name=name, private_ip=f"10.0.0.{n}",
                    instance_tags={"team": "hpc"}, launch_time="2026-11-28T10:00:00Z")


def status(client: TestClient, *ids: object) -> list[dict[str, Any]]:
    response = client.post("/hostfactory/request-status",
                           json={"requests": [{"requestId": i} for i in ids]})
    assert response.status_code == 200, response.text
    answers: list[dict[str, Any]] = response.json()["requests"]
    return answers


def test_acquire_and_return_mixed_in_one_batch(client: TestClient, rclient: redis.Redis) -> None:
    pair = Pair(rclient)
    pair.send("create_request", template_id="small", max_number=3, request_id="req-a")
    up(pair, "req-a", "h1", "h2")
    pair.report("i-h3", "pending", "req-a")
    acquire = status(client, "req-a")[0]
    assert acquire["status"] == "running"
    assert [m["result"] for m in acquire["machines"]] == ["succeed", "succeed", "executing"]
    first = acquire["machines"][0]
    assert set(first) == MACHINE_KEYS and first["instanceTags"] == "team=hpc"
    assert first["launchtime"] == 1795860000 and first["name"] == "h1"
    spec = client.get("/openapi.json").json()["paths"]["/hostfactory/request-status"]["post"]
    answer = spec["responses"]["200"]["content"]["application/json"]["schema"]
    machine = answer["properties"]["requests"]["items"]["properties"]["machines"]["items"]
    assert set(machine["required"]) == MACHINE_KEYS  # the document says what is served
    up(pair, "req-a", "h3")
    pair.send("return_machines", machines=[{"name": "h1", "machine_id": "i-h1"},
                                           {"name": "h2"}], request_id="ret-b")
    acquire, ret, unknown = status(client, "req-a", "ret-b", "req-nobody")
    assert acquire["status"] == "complete"
    assert ret["status"] == "running"
    assert [m["result"] for m in ret["machines"]] == ["executing", "executing"]
    assert unknown == {"requestId": "req-nobody", "status": "complete_with_error",
                       "message": hf.UNKNOWN_REQUEST, "machines": []}
    pair.report("i-h1", "terminated")
    pair.report("i-h2", "shutting-down")
    ret = status(client, "ret-b")[0]
    assert [(m["result"], m["status"]) for m in ret["machines"]] == [
        ("succeed", "terminated"), ("executing", "shutting-down")]
    pair.report("i-h2", "terminated")
    assert status(client, "ret-b")[0]["status"] == "complete"


def test_deadline_fails_what_was_not_up(client: TestClient, rclient: redis.Redis) -> None:
    pair = Pair(rclient, timeout_s=60)
    pair.send("create_request", template_id="small", max_number=3, request_id="req-a")
    pair.send("create_request", template_id="small", max_number=1, request_id="req-none")
    up(pair, "req-a", "h1", "h2")
    pair.report("i-h3", "pending", "req-a")
    pair.now += 61  # the query service's clock already says: deadline passed
    for request_id in ("req-a", "req-none"):
        assert pair.send("deadline", request_id=request_id) == "applied"
    acquire, none = status(client, "req-a", "req-none")
    assert acquire["status"] == "complete_with_error"
    assert "deadline passed: 2 of 3" in acquire["message"]
    late = acquire["machines"][2]
    assert (late["result"], late["message"]) == ("fail", hf.DEADLINE_PASSED)
    assert none["status"] == "complete_with_error" and none["machines"] == []
    # Up after the deadline: recorded, and failed as launched too late.
    pair.report("i-h3", "running", name="h3", private_ip="10.0.0.3")
    late = status(client, "req-a")[0]["machines"][2]
    assert (late["result"], late["message"]) == ("fail", hf.LAUNCHED_LATE)


def test_just_sent_and_refused_ids(client: TestClient, rclient: redis.Redis) -> None:
    pair = Pair(rclient)
    command_id = hf.time_ordered_id()
    sent = status(client, f"req-{command_id}")[0]
    assert (sent["status"], sent["message"]) == ("running", hf.ACCEPTED_NOT_APPLIED)
    old = hf.time_ordered_id(time.time() - 3600)
    assert status(client, f"req-{old}")[0]["status"] == "complete_with_error"
    refused = Envelope("commands.create_request", command_id,
                       {"template_id": "gpu", "max_number": 1})
    pair.projector.project(pair.executor.execute(refused).docs)
    answer = status(client, f"req-{command_id}")[0]
    assert answer["status"] == "complete_with_error"
    assert "template_not_found" in answer["message"]


def test_single_object_forms_and_bad_bodies(client: TestClient) -> None:
    one = client.post("/hostfactory/request-status", json={"requests": {"requestId": "req-x"}})
    assert [r["requestId"] for r in one.json()["requests"]] == ["req-x"]
    odd = status(client, "", 7, "a b")
    assert [r["message"] for r in odd] == ["not a valid request id"] * 3
    assert client.post("/hostfactory/request-status", content=b"{").status_code == 400
    assert client.post("/hostfactory/request-status", json=[1]).status_code == 400
    many = {"requests": [{"requestId": f"req-{n}"} for n in range(1001)]}
    assert client.post("/hostfactory/request-status", json=many).status_code == 413
    huge = client.post("/hostfactory/request-status", content=b" " * (5 * 1024 * 1024))
    assert huge.status_code == 413
    assert client.get("/hostfactory/request-status").status_code == 405


def test_return_requests_answer_for_the_listed_hosts(client: TestClient,
                                                     rclient: redis.Redis) -> None:
    pair = Pair(rclient)
    pair.send("create_request", template_id="small", max_number=3, request_id="req-a")
    up(pair, "req-a", "h1", "h2", "h3")
    listed = [{"name": "h1", "machineId": "i-h1"}, {"name": "h2"}, {"name": "h3"},
              {"name": "stranger", "machineId": "i-stranger"}]

    def ask(body: object) -> dict[str, Any]:
        answer: dict[str, Any] = client.post("/hostfactory/return-requests", json=body).json()
        return answer

    quiet = ask({"machines": listed})
    assert quiet["requests"] == [] and "1 unknown" in quiet["message"]
    pair.report("i-h2", "terminated")  # out of band: a console termination
    reclaim = time.time() + 120
    pair.report("i-h3", "running", reclaim_at=reclaim)
    answer = ask({"machines": listed})
    assert answer["status"] == "complete"
    gone = {r["machine"]: r["gracePeriod"] for r in answer["requests"]}
    assert gone.keys() == {"h2", "h3"} and gone["h2"] == 0 and 115 <= gone["h3"] <= 120
    assert ask({})["requests"] == []
    pair.report("i-h3", "running", reclaim_at=time.time() - 5)  # overdue: never negative
    assert {r["machine"]: r["gracePeriod"] for r in ask({"machines": listed})["requests"]}[
        "h3"] == 0


def test_templates_in_hostfactory_shape(client: TestClient, rclient: redis.Redis) -> None:
    assert client.get("/hostfactory/templates").status_code == 503  # none loaded: never []
