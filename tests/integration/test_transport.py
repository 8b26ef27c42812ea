"""The loss-free transport against a real Redis: a pop is recorded as unacknowledged in the
same step, a dead consumer's messages come back, a message that keeps coming back is
dead-lettered."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from kombu import Connection, Consumer, Exchange, Producer, Queue

from commands_worker.adapters.broker.transport import Transport, _Watcher
from shared import keys
from tests.conftest import Proc, wait_for
from tests.integration.test_replicas import RedisServer
from tests.messages import body_of, encoded, envelope

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
    threading.Timer(0.3, publish, args=(connection, {"late": True})).start()
    message = receive_one(connection)  # sweeps find nothing, BLMOVE picks it up
    assert message.payload == {"late": True}
    assert rclient.hexists("unacked", message.delivery_tag)
    assert all(rclient.llen(k) == 0 for k in rclient.scan_iter(f"{keys.PREFIX}broker:inflight:*"))
    message.ack()


def test_a_message_a_watcher_takes_for_a_forgotten_consumer_comes_back(
        connection: Connection, rclient: redis.Redis) -> None:
    """A queue watcher whose consumer was given up for dead (its lease lapsed: a stalled
    worker, a connection lost without a close) takes one more message. It is not lost with
    the forgotten consumer: the watcher registers the consumer again, without a lease, and
    the next recovery, by any worker, hands the message back."""
    channel = connection.channel()
    channel._registered_queues = ("t.q",)
    watcher = _Watcher(channel, "t.q", lambda: None)
    watcher.start()
    try:
        time.sleep(0.2)  # blocked on the empty queue
        with connection.channel() as other:
            other.recover_orphans(other.client)  # no lease was ever taken: forgotten
            assert not rclient.hexists(keys.CONSUMERS_KEY, channel.consumer_id)
            rclient.lpush("t.q", b'{"late": true}')  # no channel closed (each close recovers)
            wait_for(lambda: rclient.hexists(keys.CONSUMERS_KEY, channel.consumer_id), 5,
                     what="the watcher to register its consumer again")
            assert rclient.llen("t.q") == 0
            assert other.recover_orphans(other.client) == 1
        assert rclient.lrange("t.q", 0, -1) == [b'{"late": true}']
    finally:
        channel.close()
    watcher.join(3)
    assert not watcher.is_alive()


@pytest.fixture(params=["default", "strict"])
def user_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The worker's Redis user as deploy/redis/users.acl makes it, or a site's stricter one
    that refuses ``CLIENT ID`` and ``CLIENT UNBLOCK`` (a private Redis: the machine's own
    ACL is left alone)."""
    (tmp_path / request.param).mkdir()
    server = RedisServer(tmp_path / request.param).start()
    try:
        if request.param == "default":
            yield server.url
            return
        redis.Redis(port=server.port).acl_setuser(
            "strict", enabled=True, passwords=["+pw"], keys=["*"], channels=["*"],
            commands=["+@all", "-client|id", "-client|unblock"])
        yield f"redis://strict:pw@127.0.0.1:{server.port}/0"
    finally:
        server.stop()


def test_a_message_that_arrives_as_a_watcher_stops_is_not_lost(user_url: str) -> None:
    """A channel closes (a worker stopping, or reconnecting) while its queue watcher blocks on
    a queue, and a producer pushes a command just after the close has handed back what the
    consumer held. The watcher must not take it into an in-flight list that no one will
    recover: the close stops its watchers, and waits until none can move a message any
    more, before it hands back. (Before, the watcher's block took it, and it stayed in the
    in-flight list of a consumer already forgotten: lost.) A user refused ``CLIENT ID``
    still has the queue watched (a message is taken at once), and its close waits out the
    block instead of cutting it short."""
    rclient = redis.Redis.from_url(user_url)
    connection = Connection(user_url, transport=Transport,
                            transport_options={"visibility_timeout": 1})
    channel = connection.channel()
    channel._register_consumer(channel.client, ["t.q"])
    watcher = channel.watching.threads["t.q"] = _Watcher(channel, "t.q", lambda: None)
    watcher.start()
    wait_for(lambda: rclient.info("clients")["blocked_clients"] >= 1, 5,
             what="the watcher blocked on the empty queue")
    rclient.lpush("t.q", b'{"first": true}')
    wait_for(lambda: list(channel.watching.woken) == [("t.q", b'{"first": true}')], 2,
             what="the watcher to take a message at once")
    channel.watching.claimed("t.q")  # as the loop does: it may take the next one
    wait_for(lambda: rclient.info("clients")["blocked_clients"] >= 1, 5,
             what="the watcher blocked again")
    recover = channel.recover_orphans

    def recover_then_a_push(client: Any) -> int:
        moved = int(recover(client))
        rclient.lpush("t.q", b'{"late": true}')
        time.sleep(0.3)  # the push is served to any block still waiting on the queue
        return moved

    channel.recover_orphans = recover_then_a_push
    started = time.monotonic()
    channel.close()
    took = time.monotonic() - started
    connection.release()
    if "strict" not in user_url:
        assert took < 0.3 + 0.5  # the watcher's block was cut short, not waited out
    watcher.join(3)
    assert not watcher.is_alive()
    # The first message was taken but never claimed: the close hands it back too.
    assert sorted(rclient.lrange("t.q", 0, -1)) == [b'{"first": true}', b'{"late": true}']
    assert not [k for k in rclient.scan_iter(keys.inflight_key("*", "*")) if rclient.llen(k)]


def _keep_awake(url: str, done: threading.Event) -> None:
    """Another client of the same Redis, a ping every millisecond."""
    client = redis.Redis.from_url(url)
    while not done.wait(0.001):
        with contextlib.suppress(redis.RedisError):
            client.ping()
    client.close()


def _pops(client: redis.Redis) -> int:
    stats: Any = client.info("commandstats")
    return sum(int(stats.get(f"cmdstat_{name}", {}).get("calls", 0))
               for name in ("blmove", "evalsha"))


@pytest.mark.worker
def test_an_idle_worker_asks_little_and_takes_either_queue_at_once(
        start_worker: Callable[..., Proc], tmp_path: Path) -> None:
    """The worker's loop blocks on its first queue, 100 ms at a time, and a thread blocks on
    each other queue: a command on either is taken at once, and an idle worker asks Redis
    about twenty times a second. Before, the loop took the queues in turn, 5 ms each: on a
    Redis kept awake by other clients (a shared one) an idle worker sent it about 270 pops
    a second (measured here), and a command on the other queue waited out the rest of the
    block. Measured on a Redis of its own (another client pinging it throughout), from the
    push to the projector's announcement of the command's view."""
    (tmp_path / "quiet").mkdir()
    server = RedisServer(tmp_path / "quiet").start()
    busy = threading.Event()
    try:
        threading.Thread(target=_keep_awake, args=(server.url, busy), daemon=True).start()
        start_worker(REDIS_URL=server.url)
        client = redis.Redis.from_url(server.url)
        before = _pops(client)
        time.sleep(1)
        assert _pops(client) - before < 40
        announced = client.pubsub(  # type: ignore[no-untyped-call]
            ignore_subscribe_messages=True)
        announced.subscribe(keys.VIEWS_CHANNEL)
        lags: dict[str, list[float]] = {"commands.requests": [], "commands.machines": []}
        for n in range(21):
            queue = "commands.requests" if n % 2 == 0 else "commands.machines"
            request_id = f"quiet-{n // 2}"
            task, kwargs = (("commands.create_request",
                             {"template_id": "x86-large", "max_number": 1,
                              "request_id": request_id}) if n % 2 == 0 else
                            ("commands.update_machine_status",
                             {"machine_id": f"{request_id}-m", "request_id": request_id,
                              "status": "running"}))
            message = envelope(task, body_of(kwargs), queue=queue)
            command_key = keys.command_key(message["headers"]["id"])
            time.sleep(0.12)  # quiet again: the worker blocks
            while announced.get_message(timeout=0):
                pass
            pushed = time.perf_counter()
            client.lpush(queue, encoded(message))
            while True:
                got = announced.get_message(timeout=5)
                assert got is not None, f"{task} not applied within 5 s"
                if got["data"].decode().startswith(command_key + " "):
                    break
            if n:  # the first command warms the worker up
                lags[queue].append((time.perf_counter() - pushed) * 1000)
        for queue, measured in lags.items():
            p90 = sorted(measured)[int(len(measured) * 0.9) - 1]
            assert p90 < 50, (queue, sorted(round(x, 1) for x in measured))
        announced.close()
        client.close()
    finally:
        busy.set()
        server.stop()
