"""The provider feed: each thing a provider must act on is one event in the stream, written
with the change that caused it (the outbox), added once however often it is projected, and
valid against its JSON Schema in docs/schemas/."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import redis

from commands_worker.adapters.projector import Projector
from commands_worker.service_layer.executor import Envelope, Executor
from commands_worker.service_layer.maintenance import rebuild_read_model
from shared import keys
from tests.conftest import ROOT
from tests.fakes import FakeStore
from tests.inprocess import InProcessWorker

SCHEMAS = {name: json.loads((ROOT / "docs" / "schemas" / f"feed-{name}.json").read_text())
           for name in ("acquire", "return", "release")}


def feed(client: redis.Redis) -> list[dict[str, Any]]:
    events = []
    entries: Any = client.xrange(keys.FEED_STREAM_KEY)
    for _, fields in entries:
        event = json.loads(fields[b"event"])
        assert fields[b"event_id"].decode() == event["event_id"]
        assert fields[b"type"].decode() == event["type"]
        jsonschema.validate(event, SCHEMAS[event["type"]])
        events.append(event)
    return events


Worker = InProcessWorker


def test_one_event_per_change_whatever_is_projected_again(rclient: redis.Redis) -> None:
    worker = Worker(rclient)
    worker.send("create_request", template_id="small", max_number=2, request_id="req-a",
                attributes={"rc_account": "grid"})
    for n in range(2):
        worker.send("update_machine_status", machine_id=f"m{n}", status="running",
                    request_id="req-a", metadata={"name": f"h{n}"})
    worker.send("return_machines", machines=[{"name": "h0"}, {"name": "nobody"}],
                request_id="ret-b")
    worker.send("return_machines", machines=[{"name": "nobody"}], request_id="ret-c")
    worker.projector.project(worker.docs)  # a crash before the outbox rows were deleted
    events = feed(rclient)
    assert [e["event_id"] for e in events] == ["acquire:req-a", "return:ret-b"]
    acquire, ret = events
    assert acquire["machine_count"] == 2 and acquire["template"]["templateId"] == "small"
    assert acquire["attributes"] == {"rc_account": "grid"}
    assert ret["machines"] == [{"machine_id": "m0", "name": "h0", "request_id": "req-a"}]


def test_late_machines_are_released(rclient: redis.Redis) -> None:
    worker = Worker(rclient, timeout_s=60)
    worker.send("create_request", template_id="small", max_number=3, request_id="req-a")
    worker.send("update_machine_status", machine_id="m0", status="running", request_id="req-a")
    worker.send("update_machine_status", machine_id="m1", status="pending", request_id="req-a")
    worker.now += 61
    worker.send("deadline", request_id="req-a")
    worker.send("update_machine_status", machine_id="m2", status="running", request_id="req-a")
    releases = [e for e in feed(rclient) if e["type"] == "release"]
    assert [(e["event_id"], e["reason"]) for e in releases] == [
        ("release:m1", "not up by its request's deadline"),
        ("release:m2", "launched after its request's deadline")]


def test_a_rebuild_republishes_the_open_work(rclient: redis.Redis, tmp_path: Path) -> None:
    worker = Worker(rclient)
    worker.send("create_request", template_id="small", max_number=1, request_id="req-open")
    worker.send("create_request", template_id="small", max_number=1, request_id="req-done")
    worker.send("update_machine_status", machine_id="m0", status="running",
                request_id="req-done", metadata={"name": "h0"})
    worker.send("return_machines", machines=[{"name": "h0"}], request_id="ret-open")
    rclient.flushdb()  # Redis lost everything: views, feed, markers
    rebuild_read_model(FakeStore(worker.state), worker.projector, retention_s=600)
    assert sorted(e["event_id"] for e in feed(rclient)) == ["acquire:req-open",
                                                            "return:ret-open"]


def test_a_crash_between_commit_and_publish_loses_no_event(rclient: redis.Redis,
                                                           tmp_path: Path) -> None:
    """The worker committed (views and events in the outbox) and died before projecting:
    the sweep of a worker that starts later publishes the event, once however often it runs."""
    from commands_worker.adapters.sql.store import Store as SqlStore
    from commands_worker.adapters.templates_file import EXAMPLE_TEMPLATES, load_templates_file
    from commands_worker.service_layer.maintenance import repair_outbox

    store = SqlStore.from_url(f"sqlite:///{tmp_path / 'crash.sqlite3'}")
    store.load_templates(load_templates_file(EXAMPLE_TEMPLATES).templates)
    executor = Executor(store.unit_of_work, retention_s=600)
    executor.execute(Envelope("commands.create_request", "c1",
                              {"template_id": "x86-small", "max_number": 1}))
    assert rclient.xlen(keys.FEED_STREAM_KEY) == 0  # committed, never projected
    projector = Projector(rclient)
    assert repair_outbox(store, projector, older_than_s=0) > 0
    repair_outbox(store, projector, older_than_s=0)
    assert [e["event_id"] for e in feed(rclient)] == ["acquire:req-c1"]
    store.engine.dispose()
