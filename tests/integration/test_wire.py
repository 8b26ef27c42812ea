"""``shared.wire`` builds the message the gateway pushes; it must be the message Celery itself
would push for the same command, so that every consumer (our worker, a plain Celery worker, the
dead-letter tools) reads it alike. Compared here with what ``Celery.send_task`` really wrote
into Redis, key by key."""

from __future__ import annotations

import ast
import base64
import json
from typing import Any

import pytest
import redis

from shared import names, wire
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
    client = CommandClient(redis_url)
    client.send(task, kwargs)
    client.close()
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
