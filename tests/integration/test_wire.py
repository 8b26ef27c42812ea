"""``shared.wire`` builds the message the gateway and ``CommandClient`` push on Redis; it must
be the message Celery itself would push for the same command, so that every consumer (our
worker, a plain Celery worker, the dead-letter tools) reads it alike. Compared here with what
``Celery.send_task`` really wrote into Redis, key by key."""

from __future__ import annotations

import ast
import base64
import json
from typing import Any

import pytest
import redis
from celery import Celery

from shared import brokers, names, wire
from shared.client import CommandClient

pytestmark = [pytest.mark.redis]
# Per message or per process by nature: a random tag, the producer's reply queue and pid; and
# kwargsrepr, for display only, which Celery writes with its saferepr (escapes differ).
VARYING = {("properties", "delivery_tag"), ("properties", "reply_to"), ("headers", "origin"),
           ("headers", "kwargsrepr")}


def _flat(message: dict[str, Any]) -> dict[tuple[str, str], Any]:
    return {(part, key): value for part in ("headers", "properties")
            for key, value in message[part].items()}


@pytest.mark.parametrize("task, kwargs", [
    (names.CREATE_REQUEST_TASK, {"template_id": "x86-small", "max_number": 2,
                                 "attributes": {"note": "é\"\\\n", "n": [1, 2.5, None]}}),
    (names.UPDATE_MACHINE_STATUS_TASK, {"machine_id": "m-1", "status": "running",
                                        "request_id": "req-1"}),
    (names.RETURN_MACHINES_TASK, {"machines": [{"name": "h-1"}]}),
])
def test_a_wire_message_is_the_one_celery_sends(redis_url: str, rclient: redis.Redis,
                                                task: str, kwargs: dict[str, Any]) -> None:
    queue = names.QUEUE_OF_TASK[task]
    kwargs = {**kwargs, "command_id": "cmd-1"}
    celery = Celery("plain-producer", broker=redis_url, set_as_current=False)
    celery.conf.update(brokers.producer_conf(redis_url))
    celery.send_task(task, kwargs=kwargs, task_id="cmd-1", queue=queue)
    celery.close()
    celery_made = json.loads(rclient.rpop(queue))  # type: ignore[arg-type]
    ours = json.loads(wire.redis_message(task, queue, "cmd-1", kwargs))
    assert set(ours) == set(celery_made)
    for key in ("content-encoding", "content-type"):
        assert ours[key] == celery_made[key]
    assert json.loads(base64.b64decode(ours["body"])) == json.loads(
        base64.b64decode(celery_made["body"]))
    theirs_flat, ours_flat = _flat(celery_made), _flat(ours)
    assert set(ours_flat) == set(theirs_flat)
    assert {k: v for k, v in ours_flat.items() if k not in VARYING} == {
        k: v for k, v in theirs_flat.items() if k not in VARYING}
    assert ours["headers"]["origin"].startswith("gen")
    assert ast.literal_eval(ours["headers"]["kwargsrepr"]) == kwargs
    other = json.loads(wire.redis_message(task, queue, "cmd-1", kwargs))
    assert other["properties"]["delivery_tag"] != ours["properties"]["delivery_tag"]


def test_the_client_checks_every_command_then_sends_them_all(redis_url: str,
                                                                 rclient: redis.Redis) -> None:
    """``CommandClient.send_many`` on Redis: every command validated first (one bad one sends
    none), then all pushed at once onto their queues, in order."""
    import pydantic

    client = CommandClient(redis_url)
    good = [(names.UPDATE_MACHINE_STATUS_TASK, {"machine_id": f"m-{n}", "status": "running",
                                                "request_id": "req-1"}) for n in range(5)]
    with pytest.raises(pydantic.ValidationError):
        client.send_many([*good, (names.CREATE_REQUEST_TASK, {"max_number": "3"})])
    assert rclient.llen(names.MACHINES_QUEUE) == 0
    before = rclient.info("commandstats").get("cmdstat_lpush", {}).get("calls", 0)
    sent = client.send_many([*good, (names.CREATE_REQUEST_TASK, {
        "template_id": "x86-small", "max_number": 1})])
    assert rclient.info("commandstats")["cmdstat_lpush"]["calls"] - before == 6
    queued = [json.loads(m) for m in reversed(rclient.lrange(names.MACHINES_QUEUE, 0, -1))]
    assert [m["headers"]["id"] for m in queued] == [s.command_id for s in sent[:5]]
    assert sent[5].request_id == f"req-{sent[5].command_id}"
    client.close()
