"""The command gateway over a real Redis broker: what it publishes is the public contract's
message (task name, queue, kwargs, task id = command id), and what it refuses it explains."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from commands_worker.gateway.app import create_app
from shared.settings import Settings


@pytest.fixture
def gateway(redis_url: str) -> Iterator[TestClient]:
    env = {"REDIS_URL": redis_url, "QUERY_URL": "http://query.example:8080"}
    with TestClient(create_app(Settings.from_env(env))) as client:
        yield client


def published(client: redis.Redis, queue: str) -> list[dict[str, Any]]:
    """The messages waiting on ``queue``, as the worker will read them."""
    messages = []
    for raw in reversed(client.lrange(queue, 0, -1)):
        envelope = json.loads(raw)
        _, kwargs, _ = json.loads(base64.b64decode(envelope["body"]))
        messages.append({"task": envelope["headers"]["task"], "id": envelope["headers"]["id"],
                         "kwargs": kwargs})
    return messages


def test_a_command_is_published_by_the_contract(gateway: TestClient,
                                                rclient: redis.Redis) -> None:
    answer = gateway.post("/commands/create-request",
                          json={"template_id": "x86-small", "max_number": 2})
    assert answer.status_code == 202
    body = answer.json()
    assert body["request_id"] == f"req-{body['command_id']}"
    assert answer.headers["location"] == f"http://query.example:8080/requests/{body['request_id']}"
    [message] = published(rclient, "commands.requests")
    assert message == {"task": "commands.create_request", "id": body["command_id"], "kwargs": {
        "template_id": "x86-small", "max_number": 2, "command_id": body["command_id"]}}
    seed = gateway.post("/requests", json={"template_id": "x86-small", "max_number": 1})
    assert seed.status_code == 202 and seed.json()["task"] == "commands.create_request"
    ret = gateway.post("/commands/return-machines", json={"machines": [{"name": "h1"}]})
    assert ret.json()["request_id"].startswith("ret-")
    report = gateway.post("/commands/update-machine-status", json={
        "machine_id": "m1", "status": "running", "request_id": "req-x"})
    assert report.headers["location"].endswith(f"/commands/{report.json()['command_id']}")
    assert [m["task"] for m in published(rclient, "commands.machines")] == [
        "commands.update_machine_status"]


def test_a_retried_post_is_the_same_command(gateway: TestClient, rclient: redis.Redis) -> None:
    body = {"template_id": "x86-small", "max_number": 1}
    first = gateway.post("/commands/create-request", json=body,
                         headers={"Idempotency-Key": "order-17"})
    again = gateway.post("/commands/create-request", json=body,
                         headers={"Idempotency-Key": "order-17"})
    assert first.json()["command_id"] == again.json()["command_id"] == "order-17"
    assert {m["id"] for m in published(rclient, "commands.requests")} == {"order-17"}
    clash = gateway.post("/commands/create-request", json={**body, "command_id": "other"},
                         headers={"Idempotency-Key": "order-17"})
    assert clash.status_code == 422


def test_refusals_say_what_and_why(gateway: TestClient, rclient: redis.Redis) -> None:
    bad = gateway.post("/commands/create-request",
                       json={"template_id": "x86-small", "max_number": "3", "extra": 1})
    assert bad.status_code == 422
    fields = {p["field"]: p["problem"] for p in bad.json()["detail"]}
    assert set(fields) == {"max_number", "extra"}
    assert gateway.post("/commands/create-request", content=b"{").status_code == 400
    assert gateway.post("/commands/drop-tables", json={}).status_code == 404
    huge = gateway.post("/commands/return-machines", content=b" " * (5 * 2**20))
    assert huge.status_code == 413
    assert gateway.get("/commands/create-request").status_code == 405
    assert rclient.llen("commands.requests") == 0  # nothing refused was published


def test_tokens(redis_url: str) -> None:
    env = {"REDIS_URL": redis_url, "GATEWAY_API_TOKENS": "s3cret"}
    with TestClient(create_app(Settings.from_env(env))) as client:
        body = {"template_id": "x86-small", "max_number": 1}
        assert client.post("/commands/create-request", json=body).status_code == 401
        ok = client.post("/commands/create-request", json=body,
                         headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 202
        assert client.get("/healthz").status_code == 200


def test_an_unreachable_broker_is_503(redis_url: str) -> None:
    env = {"REDIS_URL": "redis://127.0.0.1:1/0"}
    with TestClient(create_app(Settings.from_env(env))) as client:
        answer = client.post("/commands/create-request",
                             json={"template_id": "x86-small", "max_number": 1})
        assert answer.status_code == 503 and answer.json()["error"] == "broker_unavailable"
        # The id to resend under: the broker may have the command after all.
        assert answer.json()["command_id"]
        keyed = client.post("/commands/create-request", headers={"Idempotency-Key": "k-1"},
                            json={"template_id": "x86-small", "max_number": 1})
        assert keyed.status_code == 503 and keyed.json()["command_id"] == "k-1"


def test_a_key_reused_for_another_command_is_refused(gateway: TestClient,
                                                     rclient: redis.Redis) -> None:
    body = {"template_id": "x86-small", "max_number": 1}
    first = gateway.post("/commands/create-request", json=body,
                         headers={"Idempotency-Key": "order-9"})
    assert first.status_code == 202
    other_body = gateway.post("/commands/create-request", json={**body, "max_number": 2},
                              headers={"Idempotency-Key": "order-9"})
    assert other_body.status_code == 409
    assert "first used for commands.create_request with another body" in \
        other_body.json()["detail"]
    other_type = gateway.post("/commands/return-machines", json={"machines": [{"name": "h"}]},
                              headers={"Idempotency-Key": "order-9"})
    assert other_type.status_code == 409
    assert "first used for commands.create_request" in other_type.json()["detail"]
    # The same command again is a retry: accepted, and the worker applies it once.
    assert gateway.post("/commands/create-request", json=body,
                        headers={"Idempotency-Key": "order-9"}).status_code == 202
    assert [m["kwargs"]["max_number"] for m in published(rclient, "commands.requests")] == [
        1, 1]
    assert rclient.llen("commands.machines") == 0


def test_ids_are_refused_at_the_door_with_the_right_reason(gateway: TestClient,
                                                           rclient: redis.Redis) -> None:
    body = {"template_id": "x86-small", "max_number": 1}
    numeric = gateway.post("/commands/create-request", json={**body, "command_id": 5})
    assert numeric.status_code == 422
    assert numeric.json()["detail"] == [{"field": "command_id",
                                         "problem": "must be a string: an id"}]
    empty = gateway.post("/commands/create-request", json={**body, "command_id": ""})
    assert empty.status_code == 422 and "id rule" in empty.json()["detail"][0]["problem"]
    long_key = gateway.post("/commands/create-request", json=body,
                            headers={"Idempotency-Key": "k" * 200})
    assert long_key.status_code == 422
    assert "request id req-<id> must fit 200" in long_key.json()["detail"][0]["problem"]
    # With its own request_id, a 200-character key is fine.
    assert gateway.post("/commands/create-request", json={**body, "request_id": "r-1"},
                        headers={"Idempotency-Key": "k" * 200}).status_code == 202
    assert len(published(rclient, "commands.requests")) == 1


_SPEC = json.loads(__import__("commands_worker.gateway.app", fromlist=["x"])
                   .openapi_document())
_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.text(max_size=12)),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(
        ["template_id", "max_number", "machines", "name", "machine_id", "status",
         "request_id", "metadata", "command_id", "x"]), inner, max_size=5)),
    max_leaves=15)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(sorted(_SPEC["paths"])), body=_values,
       key=st.one_of(st.none(), st.text(max_size=10)))
def test_any_body_on_any_documented_path_is_never_a_500(gateway: TestClient, path: str,
                                                        body: object, key: str | None) -> None:
    headers = {} if key is None else {"Idempotency-Key": key.encode("utf-8")}
    answer = gateway.post(path, content=json.dumps(body), headers=headers)
    # 409: the same key drawn again for another body (a key names one command).
    assert answer.status_code in (202, 400, 409, 422), answer.text
    assert isinstance(answer.json(), dict)


def test_concurrent_commands_are_each_published_once(redis_url: str,
                                                      rclient: redis.Redis) -> None:
    """Commands that arrive together share round trips to the broker: every one answered
    202 is in the queue once, a keyed retry in the same round trip as its first send is
    published again (the worker applies it once), and a key reused for another body in the
    same round trip is refused, not published."""
    import asyncio

    import httpx

    app = create_app(Settings.from_env({"REDIS_URL": redis_url}))
    body = {"template_id": "x86-small", "max_number": 1}

    async def run() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            sends = [client.post("/commands/create-request", json=body) for _ in range(150)]
            sends += [client.post("/commands/create-request", json=body,
                                  headers={"Idempotency-Key": "same-1"}) for _ in range(3)]
            sends.append(client.post("/commands/create-request", json={**body, "max_number": 2},
                                     headers={"Idempotency-Key": "same-1"}))
            sends.append(client.post("/commands/update-machine-status", json={
                "machine_id": "m-1", "status": "running", "request_id": "req-x"}))
            return list(await asyncio.gather(*sends))

    answers = asyncio.run(run())
    statuses = [a.status_code for a in answers]
    assert statuses[:153] == [202] * 153 and statuses[154] == 202
    assert statuses[153] == 409  # the same key, another body: refused
    ids = [a.json()["command_id"] for a in answers[:150]]
    assert len(set(ids)) == 150
    queued = published(rclient, "commands.requests")
    assert sorted(m["id"] for m in queued) == sorted([*ids, "same-1", "same-1", "same-1"])
    assert {m["kwargs"]["max_number"] for m in queued if m["id"] == "same-1"} == {1}
    assert [m["task"] for m in published(rclient, "commands.machines")] == [
        "commands.update_machine_status"]
