"""Messages the worker refuses or cannot even decode end in dead letters, with reasons, and
can be listed and replayed; the worker carries on."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.conftest import ROOT, Proc, wait_for

CREATE = "commands.create_request"


def hfctl(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hfctl", *args], env=env,
                          cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)


def dead_letters(env: dict[str, str]) -> list[dict[str, Any]]:
    result = hfctl(env, "dead-letters", "list", "--json")
    assert result.returncode == 0, result.stderr
    letters: list[dict[str, Any]] = json.loads(result.stdout)
    return letters


def kombu_envelope(task: str, body: bytes, content_type: str = "application/json",
                   encoding: str = "utf-8") -> str:
    task_id = str(uuid.uuid4())
    return json.dumps({
        "body": base64.b64encode(body).decode(), "content-encoding": encoding,
        "content-type": content_type,
        "headers": {"lang": "py", "task": task, "id": task_id, "root_id": task_id,
                    "parent_id": None, "group": None, "retries": 0, "eta": None,
                    "expires": None, "timelimit": [None, None], "argsrepr": "",
                    "kwargsrepr": "", "origin": "test"},
        "properties": {"correlation_id": task_id, "reply_to": "", "delivery_mode": 2,
                       "delivery_info": {"exchange": "commands.requests",
                                         "routing_key": "commands.requests"},
                       "priority": 0, "body_encoding": "base64",
                       "delivery_tag": str(uuid.uuid4())}})


@pytest.mark.parametrize("broker_kind", ["redis", "rabbitmq"], indirect=True)
def test_undecodable_messages_are_dead_lettered(worker: Proc, stack_env: dict[str, str],
                                                rclient: redis.Redis, producer: Any,
                                                raw_push: Any, broker_kind: str) -> None:
    queue = "commands.requests"
    raw_push(queue, b"\x00\xffnot json at all")
    raw_push(queue, json.dumps({"hello": "world"}).encode())
    raw_push(queue, json.loads(kombu_envelope(CREATE, b"[[], {broken json", "application/json")))
    raw_push(queue, json.loads(kombu_envelope(CREATE, b"\x80\x04pickled",
                                              "application/x-python-serialize", "binary")))
    producer.send_task("commands.no_such_command", kwargs={"x": 1}, queue=queue)
    good = producer.send_task(CREATE, kwargs={"template_id": "x86-small", "max_number": 1},
                              queue=queue)

    letters = wait_for(lambda: (found := dead_letters(stack_env)) and len(found) >= 5 and found,
                       30, every_s=0.5, what="five dead letters")
    reasons = " | ".join(letter["reason"] for letter in letters)
    assert len(letters) == 5, reasons
    if broker_kind == "redis":  # our transport refuses them before Celery sees them
        assert reasons.count("not a kombu JSON envelope") == 2
    else:
        assert reasons.count("not a Celery task message") == 2, reasons
    assert "commands.no_such_command" in reasons
    assert "application/x-python-serialize" in reasons or "pickle" in reasons
    assert all(letter["raw"] for letter in letters)
    # The worker carried on.
    wait_for(lambda: rclient.get(f"hf:v1:request:req-{good.id}"), 20, what="the good command")


@pytest.mark.parametrize("broker_kind", ["redis", "rabbitmq"], indirect=True)
def test_replay_after_the_missing_template_is_added(start_worker: Any, stack_env: dict[str, str],
                                                    rclient: redis.Redis, producer: Any,
                                                    templates_file: Path) -> None:
    first = start_worker()
    sent = producer.send_task(CREATE, kwargs={"template_id": "gpu-xl", "max_number": 1},
                              queue="commands.requests")
    outcome_key = f"hf:v1:command:{sent.id}"
    wait_for(lambda: rclient.get(outcome_key), 20, what="the refusal")
    assert json.loads(rclient.get(outcome_key) or b"")["outcome"] == "rejected"
    [letter] = dead_letters(stack_env)
    assert "template_not_found" in letter["reason"] and letter["command_id"] == sent.id

    # The operator adds the template and restarts the worker, then replays.
    document = json.loads(templates_file.read_text())
    document["templates"].append({"templateId": "gpu-xl", "maxNumber": 4,
                                  "attributes": {"type": "X86_64", "ncpus": 8, "nram": 65536,
                                                 "ngpus": ["Numeric", "1"]}})
    templates_file.write_text(json.dumps(document))
    first.stop()
    rclient.delete("hf:v1:templates")
    start_worker()
    result = hfctl(stack_env, "dead-letters", "replay", str(letter["id"]))
    assert result.returncode == 0, result.stderr

    def applied() -> bool:
        doc = rclient.get(outcome_key)
        return bool(doc) and json.loads(doc or b"")["outcome"] == "applied"

    wait_for(applied, 20, what="the replayed command to apply")
    view = json.loads(rclient.get(f"hf:v1:request:req-{sent.id}") or b"")
    assert view["template_id"] == "gpu-xl" and view["status"] == "pending"
    assert dead_letters(stack_env) == []
