"""The loss-free transport against a real Redis: a pop is recorded as unacknowledged in the
same step, a dead consumer's messages come back, a message that keeps coming back is
dead-lettered."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from kombu import Connection, Consumer, Exchange, Producer, Queue

from commands_worker.adapters.broker.transport import Transport
from shared import keys
from tests.conftest import wait_for

QUEUE = Queue("t.q", Exchange("t.q", "direct"), routing_key="t.q")


@pytest.fixture
def connection(redis_url: str) -> Iterator[Connection]:
    conn = Connection(redis_url, transport=Transport,
                      transport_options={"visibility_timeout": 1, "max_redeliveries": 2})
    yield conn
    conn.release()


def publish(connection: Connection, body: dict[str, Any]) -> None:
    with connection.channel() as channel:
        Producer(channel).publish(body, exchange=QUEUE.exchange, routing_key="t.q",
                                  declare=[QUEUE], serializer="json")


def receive_one(connection: Connection) -> Any:
    got: list[Any] = []
    channel = connection.channel()
    consumer = Consumer(channel, [QUEUE], callbacks=[lambda body, msg: got.append(msg)],
                        accept=["json"])
    consumer.consume()
    deadline = time.monotonic() + 5
    while not got and time.monotonic() < deadline:
        with contextlib.suppress(TimeoutError):
            connection.drain_events(timeout=0.5)
    assert got, "no message delivered"
    return got[0]


def test_a_delivered_message_is_already_recorded_as_unacked(
        connection: Connection, rclient: redis.Redis) -> None:
    publish(connection, {"n": 1})
    message = receive_one(connection)
    assert rclient.llen("t.q") == 0
    assert rclient.hexists("unacked", message.delivery_tag)
    assert rclient.zscore("unacked_index", message.delivery_tag) is not None
    message.ack()
    assert not rclient.hexists("unacked", message.delivery_tag)


def test_dead_consumers_messages_come_back_then_go_to_dead_letters(
        connection: Connection, rclient: redis.Redis, redis_url: str) -> None:
    publish(connection, {"n": 2})
    message = receive_one(connection)
    tag = message.delivery_tag
    def recover() -> bool:
        with Connection(redis_url, transport=Transport,
                        transport_options={"visibility_timeout": 1,
                                           "max_redeliveries": 2}) as other:
            other.channel().qos.restore_visible(num=10)
        return False

    for attempt in (1, 2, 3):
        # The holder died: it renews nothing any more, and the index entry ages.
        message.channel.qos._delivered.clear()
        rclient.zadd("unacked_index", {tag: time.time() - 60})
        # A recovery that finds the restore mutex held (the live consumer's own periodic
        # restore) skips its turn: it runs again, as a worker's timer would.
        where = "t.q" if attempt <= 2 else keys.DEAD_LETTER_INBOX_KEY

        def recovered(w: str = where) -> bool:
            return recover() or rclient.llen(w) == 1

        wait_for(recovered, 10, what=f"recovery {attempt}")
        if attempt <= 2:
            assert rclient.llen("t.q") == 1, attempt  # handed back to the queue
            message = receive_one(connection)
            assert message.delivery_tag == tag
    assert rclient.llen("t.q") == 0
    [parked] = rclient.lrange(keys.DEAD_LETTER_INBOX_KEY, 0, -1)
    entry = json.loads(parked)
    assert "poison message" in entry["reason"] and json.loads(entry["raw"])["body"]


def test_in_flight_list_of_a_dead_consumer_is_recovered(connection: Connection,
                                                        rclient: redis.Redis) -> None:
    # A consumer that died between BLMOVE and its claim: message only in its in-flight list.
    rclient.hset(keys.CONSUMERS_KEY, "dead1", json.dumps(["t.q"]))
    rclient.lpush(keys.inflight_key("dead1", "t.q"), b'{"stranded": true}')
    # A live consumer's list is left alone.
    rclient.hset(keys.CONSUMERS_KEY, "alive1", json.dumps(["t.q"]))
    rclient.set(keys.consumer_lease_key("alive1"), "1", px=60_000)
    rclient.lpush(keys.inflight_key("alive1", "t.q"), b'{"held": true}')
    with connection.channel() as channel:
        assert channel.recover_orphans(channel.client) == 1
    assert rclient.lrange("t.q", 0, -1) == [b'{"stranded": true}']
    assert rclient.llen(keys.inflight_key("alive1", "t.q")) == 1
    assert not rclient.hexists(keys.CONSUMERS_KEY, "dead1")


def test_blocking_path_delivers_when_queues_were_empty(connection: Connection,
                                                       rclient: redis.Redis) -> None:
    import threading

    threading.Timer(0.3, publish, args=(connection, {"late": True})).start()
    message = receive_one(connection)  # sweeps find nothing, BLMOVE picks it up
    assert message.payload == {"late": True}
    assert rclient.hexists("unacked", message.delivery_tag)
    assert all(rclient.llen(k) == 0 for k in rclient.scan_iter(f"{keys.PREFIX}broker:inflight:*"))
    message.ack()
