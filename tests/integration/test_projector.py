"""The projector's compare-and-set against a real Redis."""

from __future__ import annotations

from typing import Any

import orjson
import redis

from commands_worker.adapters.projector import Projector
from commands_worker.domain.model import Request
from commands_worker.service_layer.documents import request_docs
from commands_worker.service_layer.ports import ViewDoc
from shared import keys


def req(version: int, status: str) -> Request:
    return Request("r1", "t", 2, {}, status, 1.0, float(version), version=version, seq=7)


def test_a_view_never_moves_backwards(rclient: redis.Redis) -> None:
    projector = Projector(rclient)
    newer, older = request_docs(req(3, "in_progress"), []), request_docs(req(2, "pending"), [])
    assert projector.project(newer) == 2
    assert projector.project(older) == 0
    assert projector.project(newer) == 0  # a replay of the same version is a no-op
    assert orjson.loads(rclient.get(keys.request_key("r1")) or b"")["version"] == 3


def test_status_indexes_follow_the_request(rclient: redis.Redis) -> None:
    projector = Projector(rclient)
    projector.project(request_docs(req(1, "pending"), []))
    assert rclient.zscore(keys.requests_by_status_key("pending"), "r1") == 7
    projector.project(request_docs(req(2, "complete"), []))
    assert rclient.zscore(keys.requests_by_status_key("pending"), "r1") is None
    assert rclient.zscore(keys.requests_by_status_key("complete"), "r1") == 7
    assert rclient.zscore(keys.REQUESTS_INDEX_KEY, "r1") == 7


def test_outcomes_expire_and_writes_are_announced(rclient: redis.Redis) -> None:
    pubsub = rclient.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
    pubsub.subscribe(keys.VIEWS_CHANNEL)
    pubsub.get_message(timeout=1)
    Projector(rclient).project([ViewDoc(keys.command_key("c1"), 1, b'{"version":1}', ttl_s=60)])
    assert 0 < rclient.ttl(keys.command_key("c1")) <= 60
    message = pubsub.get_message(timeout=2)
    assert message is not None and message["data"] == f"{keys.command_key('c1')} 1".encode()
    pubsub.close()


def test_history_entries_are_added_once_and_bounded(rclient: redis.Redis) -> None:
    from commands_worker.adapters.projector import HISTORY_MAX_ENTRIES
    from commands_worker.service_layer.documents import history_doc
    from commands_worker.service_layer.ports import HistoryEntry

    entries = [HistoryEntry("r1", f"c{n}", "commands.update_machine_status", "applied",
                            1000.0 + n, id=n) for n in range(1, HISTORY_MAX_ENTRIES + 3)]
    projector = Projector(rclient)
    projector.project([history_doc(entries[:10]), history_doc(entries[10:])])
    projector.project([history_doc(entries[:10])])  # a crash re-projects a row: no double
    kept: Any = rclient.zrange(keys.history_key("r1"), 0, -1, withscores=True)
    assert len(kept) == HISTORY_MAX_ENTRIES
    assert [int(score) for _, score in kept] == list(range(3, HISTORY_MAX_ENTRIES + 3))


def test_projection_survives_redis_forgetting_its_scripts(rclient: redis.Redis) -> None:
    """A restarted Redis, or a promoted replica, holds none of the projector's scripts: the
    views, the feed event and the history entry still arrive, once each."""
    from commands_worker.service_layer.documents import history_doc
    from commands_worker.service_layer.ports import HistoryEntry

    projector = Projector(rclient)
    projector.load_scripts()
    projector.project(request_docs(req(1, "pending"), []))
    rclient.script_flush()
    event = ViewDoc(keys.feed_published_key("e1"), 1, b'{"request_id":"r1"}', ttl_s=60,
                    status="acquire")
    told = history_doc([HistoryEntry("r1", "c1", "commands.create_request", "applied", 1.0,
                                     id=1)])
    assert projector.project([*request_docs(req(2, "complete"), []), event, told]) == 2
    assert orjson.loads(rclient.get(keys.request_key("r1")) or b"")["status"] == "complete"
    assert rclient.xlen(keys.FEED_STREAM_KEY) == 1
    assert rclient.zcard(keys.history_key("r1")) == 1
    assert rclient.script_exists(projector._cas.sha) == [True]
