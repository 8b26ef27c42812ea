"""A bad message costs only itself. Messages a buggy or hostile producer could push, raw,
onto the command queues among good commands: every good command is applied exactly once, the
worker never exits, every bad message is a dead letter with a reason (and a ``rejected``
outcome wherever a command id can be read), and none of Celery's built-in tasks runs."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.conftest import ROOT, Proc, wait_for
from tests.messages import CREATE, UPDATE, body_of, envelope, marker_of

GOOD = {"template_id": "x86-small", "max_number": 1}
RETURN = "commands.return_machines"
FAIL_LAUNCH = "commands.report_launch_failure"


@dataclass
class Case:
    name: str
    message: dict[str, Any] | bytes
    readable: bool  # a valid command id can be read: a rejected outcome must show it

    @property
    def task_id(self) -> str | None:
        return None if isinstance(self.message, bytes) else self.message["headers"].get("id")


def _cases() -> list[Case]:
    good_body = body_of(GOOD)
    deep: Any = "x"
    for _ in range(300):
        deep = {"a": deep}
    cases = [
        Case("body not base64", envelope(CREATE, "!!! not base64 !!!"), True),
        Case("args not a list", envelope(CREATE, body_of(GOOD, args={"a": 1})), True),
        Case("kwargs not an object", envelope(CREATE, body_of([1, 2])), True),
        Case("body not a list", envelope(CREATE, json.dumps({"x": 1}).encode()), True),
        Case("positional args", envelope(CREATE, body_of(GOOD, args=[1])), True),
        Case("eta not a date", envelope(CREATE, good_body, headers={"eta": "soon"}), True),
        Case("eta in year 9999", envelope(CREATE, good_body,
                                          headers={"eta": "9999-01-01T00:00:00+00:00"}), True),
        Case("expired", envelope(CREATE, good_body,
                                 headers={"expires": "2001-01-01T00:00:00+00:00"}), True),
        Case("protocol 1", {**envelope(CREATE, json.dumps({
            "task": CREATE, "id": str(uuid.uuid4()), "args": [], "kwargs": GOOD}).encode()),
            "headers": {}}, False),
        Case("no id header", envelope(CREATE, good_body, drop=("id",)), False),
        Case("id with spaces", envelope(CREATE, good_body, task_id="an id with spaces"), False),
        Case("id with NUL", envelope(CREATE, good_body, task_id="nul\x00id"), False),
        Case("id of 5000 characters", envelope(CREATE, good_body, task_id="x" * 5000), False),
        Case("headers not an object", {**envelope(CREATE, good_body), "headers": "x"}, False),
        Case("unknown task", envelope("commands.drop_tables", good_body), False),
        Case("task not a string", envelope(["x"], good_body), False),
        Case("pickle", envelope(CREATE, b"\x80\x04pickled",
                                content_type="application/x-python-serialize",
                                encoding="binary"), True),
        Case("max_number beyond 64 bits",
             envelope(CREATE, body_of({**GOOD, "max_number": 2**70})), True),
        Case("attributes 300 deep", envelope(CREATE, body_of({**GOOD, "attributes": deep})),
             True),
        Case("lone surrogate", envelope(CREATE, body_of({**GOOD, "template_id": "\ud800"})),
             True),
        Case("NUL in request_id", envelope(CREATE, body_of({**GOOD, "request_id": "a\x00b"})),
             True),
        Case("request_id of 300 characters",
             envelope(CREATE, body_of({**GOOD, "request_id": "r" * 300})), True),
        Case("command_id with NUL and a bad task id",
             envelope(CREATE, body_of({**GOOD, "command_id": "c\x00"}), task_id="bad id"),
             False),
        Case("observed_at in year 9999", envelope(UPDATE, body_of({
            "machine_id": "m-far", "status": "running", "request_id": "req-x",
            "observed_at": "9999-01-01T00:00:00+00:00"}), queue="commands.machines"), True),
        Case("return of 10,001 machines", envelope(RETURN, body_of({
            "machines": [{"name": f"h{n}"} for n in range(10_001)]})), True),
        Case("return entry in camelCase", envelope(RETURN, body_of({
            "machines": [{"name": "h1", "machineId": "i-1"}]})), True),
        Case("return machines not a list", envelope(RETURN, body_of({"machines": "h1"})),
             True),
        Case("host name with NUL", envelope(RETURN, body_of({
            "machines": [{"name": "h\x00st"}]})), True),
        Case("machine name with NUL", envelope(UPDATE, body_of({
            "machine_id": "m-nul", "status": "running", "request_id": "req-x",
            "metadata": {"name": "h\x00st"}})), True),
        Case("launch failure count as text", envelope(FAIL_LAUNCH, body_of({
            "request_id": "req-x", "count": "3", "message": "refused"})), True),
        Case("launch failure of 10,001 machines", envelope(FAIL_LAUNCH, body_of({
            "request_id": "req-x", "count": 10_001, "message": "refused"})), True),
        Case("launch failure message of 1 MB", envelope(FAIL_LAUNCH, body_of({
            "request_id": "req-x", "count": 1, "message": "x" * 1_000_000})), True),
        Case("launch failure for no request", envelope(FAIL_LAUNCH, body_of({
            "request_id": "req-nobody", "count": 1, "message": "refused"})), True),
        Case("not JSON at all", b"\x00\xffnot json at all", False),
        Case("JSON, not an envelope", json.dumps({"hello": "world"}).encode(), False),
        Case("no delivery tag", {**envelope(CREATE, good_body), "properties": {}}, False),
    ]
    for builtin in ("celery.group", "celery.chord_unlock", "celery.map", "celery.starmap",
                    "celery.chunks", "celery.accumulate", "celery.backend_cleanup",
                    "celery.chain", "celery.chord"):
        cases.append(Case(builtin, envelope(builtin, body_of(_relay())), False))
    return cases


def _relay() -> dict[str, Any]:
    """What a producer would hand celery.group to have the worker send a command for it."""
    evil: dict[str, Any] = {
        "task": CREATE, "args": [], "kwargs": {**GOOD, "request_id": "evil-req"},
        "options": {"task_id": "evil-cmd", "queue": "commands.requests"},
        "subtask_type": None, "immutable": False}
    return {"tasks": [evil], "partial_args": [], "group_id": "g1", "task": evil,
            "it": [[1]], "chunksize": 1, "result": None}


def _push(push: Callable[[str, Any], None], case: Case) -> None:
    queue = "commands.machines" if case.name.startswith("observed_at") else "commands.requests"
    push(queue, case.message)


# A delivery tag is part of kombu's Redis envelope only; on RabbitMQ the broker makes it.
REDIS_ONLY = frozenset({"no delivery tag"})


def dead_letters(env: dict[str, str]) -> list[dict[str, Any]]:
    result = subprocess.run([sys.executable, "-m", "hfctl", "dead-letters", "list", "--json"],
                            env=env, cwd=ROOT, capture_output=True, text=True, timeout=60,
                            check=False)
    assert result.returncode == 0, result.stderr
    letters: list[dict[str, Any]] = json.loads(result.stdout)
    return letters


@pytest.fixture
def store_env(request: pytest.FixtureRequest, stack_env: dict[str, str]) -> dict[str, str]:
    if getattr(request, "param", "sqlite") == "postgres":
        return {**stack_env, "STORE_URL": request.getfixturevalue("postgres_url")}
    return stack_env


# Both stores on Redis; on RabbitMQ one is enough: the broker changes the messages' way in,
# not the store's part.
@pytest.mark.parametrize(("store_env", "broker_kind"), [
    ("sqlite", "redis"), ("postgres", "redis"), ("sqlite", "rabbitmq")], indirect=True)
def test_bad_messages_cost_only_themselves(store_env: dict[str, str],
                                           start_worker: Callable[..., Proc],
                                           rclient: redis.Redis, producer: Any,
                                           raw_push: Callable[[str, Any], None],
                                           broker_kind: str) -> None:
    worker = start_worker(**{k: v for k, v in store_env.items() if k == "STORE_URL"})
    cases = [c for c in _cases() if broker_kind == "redis" or c.name not in REDIS_ONLY]
    good_ids = []
    for n, case in enumerate(cases):
        _push(raw_push, case)
        if n % 3 == 0:
            good_ids.append(producer.send_task(CREATE, kwargs=GOOD,
                                               queue="commands.requests").id)
    # Odd but harmless: a retries header that is not a number is not ours to judge.
    odd = envelope(CREATE, body_of(GOOD), headers={"retries": "many"})
    raw_push("commands.requests", odd)
    good_ids.append(odd["headers"]["id"])
    outcomes = wait_for(lambda: _outcomes(rclient, good_ids), 60, every_s=0.2,
                        what="every good command's outcome")
    assert set(outcomes.values()) == {"applied"}
    letters = wait_for(lambda: (found := dead_letters(store_env)) and
                       len(found) >= len(cases) and found, 60, every_s=0.5,
                       what=f"{len(cases)} dead letters")
    assert worker.proc is not None and worker.proc.poll() is None, worker.output()
    assert len(letters) == len(cases), [letter["reason"] for letter in letters]
    assert all(letter["reason"] and letter["raw"] for letter in letters)
    for case in cases:
        if case.readable:
            outcome = json.loads(rclient.get(f"hf:v1:command:{case.task_id}") or b"{}")
            assert outcome.get("outcome") == "rejected", case.name
            assert outcome["reason"], case.name
    # No built-in task ran: celery.group did not relay its command.
    assert rclient.get("hf:v1:request:evil-req") is None
    assert rclient.get("hf:v1:command:evil-cmd") is None
    # Each good command was applied once: one request each, at version 1.
    for task_id in good_ids:
        view = json.loads(rclient.get(f"hf:v1:request:req-{task_id}") or b"{}")
        assert view["version"] == 1


def _outcomes(client: redis.Redis, ids: list[str]) -> dict[str, str] | None:
    docs = client.mget([f"hf:v1:command:{i}" for i in ids])
    if any(d is None for d in docs):
        return None
    return {i: json.loads(d or b"{}")["outcome"] for i, d in zip(ids, docs, strict=True)}


# --- property: mutated envelopes --------------------------------------------------------
_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**80, 2**80) | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                max_size=3),
    max_leaves=8)
_header_names = st.sampled_from(["task", "id", "eta", "expires", "retries", "lang",
                                 "root_id", "timelimit", "hf_waits", "hf_outages"])


@st.composite
def mutants(draw: st.DrawFn) -> dict[str, Any]:
    message = envelope(CREATE, body_of(GOOD))
    for _ in range(draw(st.integers(1, 3))):
        where = draw(st.sampled_from(["header", "drop", "body", "content", "kwargs"]))
        if where == "header":
            message["headers"][draw(_header_names)] = draw(_json_values)
        elif where == "drop":
            message["headers"].pop(draw(_header_names), None)
        elif where == "body":
            message["body"] = draw(st.one_of(st.text(max_size=30), st.binary(max_size=30).map(
                lambda b: __import__("base64").b64encode(b).decode())))
        elif where == "content":
            message["content-type"] = draw(st.sampled_from(
                ["application/json", "application/x-python-serialize", "text/plain", ""]))
        else:
            kwargs = dict(GOOD, **{draw(st.sampled_from(
                ["max_number", "template_id", "attributes", "request_id", "command_id",
                 "extra"])): draw(_json_values)})
            message["body"] = __import__("base64").b64encode(body_of(kwargs)).decode()
    return message


# No shrinking: each example drives a real worker, and a shrink would take many minutes.
@settings(max_examples=4, deadline=None, derandomize=True,
          phases=(Phase.explicit, Phase.reuse, Phase.generate),
          suppress_health_check=[HealthCheck.function_scoped_fixture,
                                 HealthCheck.too_slow, HealthCheck.data_too_large])
@given(batch=st.lists(mutants(), min_size=10, max_size=10))
@pytest.mark.parametrize("broker_kind", ["redis", "rabbitmq"], indirect=True)
def test_mutated_envelopes_never_stop_the_worker(worker: Proc, stack_env: dict[str, str],
                                                 rclient: redis.Redis, producer: Any,
                                                 raw_push: Callable[[str, Any], None],
                                                 batch: list[dict[str, Any]]) -> None:
    for message in batch:
        raw_push("commands.requests", message)
    good = producer.send_task(CREATE, kwargs=GOOD, queue="commands.requests").id
    wait_for(lambda: _outcomes(rclient, [good]), 60, every_s=0.2, what="the good command")
    markers = {marker_of(m): m for m in batch}

    def accounted() -> bool:
        letters = json.dumps(dead_letters(stack_env))
        outcomes = {k.decode() for k in rclient.scan_iter("hf:v1:command:*")}
        return all(m in letters or f"hf:v1:command:{msg['headers'].get('id')}" in outcomes
                   or _command_key(msg) in outcomes for m, msg in markers.items())

    wait_for(accounted, 60, every_s=0.5, what="every mutant applied, refused or dead-lettered")
    assert worker.proc is not None and worker.proc.poll() is None, worker.output()
    assert _outcomes(rclient, [good]) == {good: "applied"}


def _command_key(message: dict[str, Any]) -> str:
    try:
        kwargs = json.loads(__import__("base64").b64decode(message["body"]))[1]
        return f"hf:v1:command:{kwargs['command_id']}"
    except Exception:
        return ""
