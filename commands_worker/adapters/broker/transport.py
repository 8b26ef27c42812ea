"""A kombu Redis transport for the command worker with no window in which a message is lost.

kombu's own Redis transport pops a message (BRPOP) and only then records it as unacknowledged:
a worker killed in between loses it. Here every pop records the message in the same atomic
step: either a Lua script pops and writes it to kombu's ``unacked`` hash in one go, or, while
the queues are empty, ``BLMOVE`` blocks and moves the message into an in-flight list owned by
this consumer, and a script then claims it into ``unacked``. A consumer keeps a lease; when it
dies, its in-flight lists and unacked messages come back in seconds (``visibility_timeout``)
rather than an hour, and live workers renew what they hold, so a slow task is never handed to
a second worker while it runs. A message handed back too often (it keeps killing workers) is
dead-lettered instead. Producers are untouched: they keep publishing with any Celery client.

One connection can block on one list only (BLMOVE). A worker on the event loop blocks on its
first queue on the channel's own connection and watches each other queue from a thread with a
connection of its own, which moves a message into the same kind of in-flight list and wakes
the loop: a message on any queue is taken at once. (Taking the queues in turn, a message on
another queue waited out the rest of a 5 ms block, and an idle worker sent a busy Redis about
270 pops a second.) Without an event loop the one connection takes the queues in turn.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterable
from typing import Any, Final

from kombu.transport import redis as kredis
from kombu.transport import virtual
from kombu.utils.json import loads
from redis.exceptions import NoScriptError, ResponseError

from commands_worker.adapters import lua, metrics
from commands_worker.adapters.broker import dead_letter_inbox
from shared import keys

log = logging.getLogger("hostfactory.worker")
# How long BLMOVE waits on one queue before the others are swept again. A message on another
# queue waits that long at worst: 20 ms made half the projection lag at 150 commands/s
# (bench.fresh: p50 12-14 -> 10-11 ms with 5 ms); an idle worker's CPU stayed under 2 %.
BLOCK_S: Final = 0.005
# A watcher's block: kombu's ``brpop_timeout``, which its stale-connection check expects.
WATCHED_BLOCK_S: Final = 1
# The loop's own block while threads watch the other queues: every queue (and its priority
# lists, which no one blocks on) is swept again at least this often.
FIRST_BLOCK_S: Final = 0.1
WATCHER_RETRY_S: Final = 0.5
UNDECODABLE: Final = "undecodable message: not a kombu JSON envelope with a delivery tag"

POP_LUA: Final = lua.source("record.lua", "pop.lua")
CLAIM_LUA: Final = lua.source("record.lua", "claim.lua")
RECOVER_LUA: Final = lua.source("recover.lua")
# Pops per round trip, at most: prefetch room caps it further.
POP_MOST: Final = 32
REFUSED_PAUSE_S: Final = 0.2
_refusals_logged_at = [0.0]


def _log_refused(what: str, exc: Exception) -> None:
    """Redis refused a write (full: ``maxmemory`` with ``noeviction``, or read-only): said in
    the log once every few seconds, not once per attempt."""
    now = time.monotonic()
    if now - _refusals_logged_at[0] > 5:
        _refusals_logged_at[0] = now
        log.warning("Redis refuses writes; backing off", extra={
            "event": "broker_refuses_writes", "what": what, "error": str(exc)})


class QoS(kredis.QoS):  # type: ignore[misc]
    """kombu's ack emulation, with leases, fast recovery and poison-message detection."""

    def append(self, message: Any, delivery_tag: str) -> None:
        # The pop already recorded the message in ``unacked``, atomically: no second write.
        virtual.QoS.append(self, message, delivery_tag)

    def ack(self, delivery_tag: str) -> None:
        self.ack_many([delivery_tag])

    def restore_visible(self, start: int = 0, num: int = 10, interval: int = 10) -> None:
        try:
            self._renew_and_restore(start, num)
        except ResponseError as exc:  # a full Redis refuses the writes: next time, then
            _log_refused("lease renewal and recovery", exc)

    def _renew_and_restore(self, start: int, num: int) -> None:
        channel: Channel = self.channel
        with channel.conn_or_acquire() as client:
            channel.renew(client, list(self._delivered))
            channel.recover_orphans(client)
            ceil = time.time() - self.visibility_timeout
            try:
                with kredis.Mutex(client, self.unacked_mutex_key, self.unacked_mutex_expire):
                    expired = client.zrange(self.unacked_index_key, ceil, 0, desc=True,
                                            byscore=True, offset=start, num=num or 100)
                    for tag in expired or []:
                        self._hand_back(client, tag, leftmost=False)
            except kredis.MutexHeld:
                pass

    def restore_unacked(self, client: Any = None) -> None:
        """Hand back what we hold when the channel closes, if the broker still answers. If it
        does not (the usual reason for closing), the messages stay recorded in ``unacked``
        and come back when our lease lapses: a failure here must not kill the worker."""
        try:
            super().restore_unacked(client)
        except Exception:
            self._delivered.clear()

    def ack_many(self, delivery_tags: list[str]) -> None:
        """Done with these: forget them, and how often each was handed back, in one round
        trip (no MULTI: a full Redis refuses even deletions queued in one)."""
        with self.channel.conn_or_acquire() as client:
            pipe = client.pipeline(transaction=False)
            for tag in delivery_tags:
                self._remove_from_indices(tag, pipe).hdel(keys.REDELIVERIES_KEY, tag)
            pipe.execute()
        for tag in delivery_tags:
            virtual.QoS.ack(self, tag)

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        if not requeue:
            self.ack(delivery_tag)
            return
        try:
            with self.channel.conn_or_acquire() as client:
                self._hand_back(client, delivery_tag, leftmost=True)
        except ResponseError as exc:
            _log_refused("a hand-back", exc)  # still recorded as unacked: its lease returns it
        self.forget(delivery_tag)

    def forget(self, delivery_tag: str) -> None:
        """Stop holding a message without a word to Redis: it stays recorded as unacked,
        its lease is no longer renewed, and it comes back after the visibility timeout."""
        virtual.QoS.ack(self, delivery_tag)

    def _hand_back(self, client: Any, tag: Any, leftmost: bool) -> None:
        """Requeue a message whose worker died or gave it back, unless it does so too often."""
        count = int(client.hincrby(keys.REDELIVERIES_KEY, tag, 1))
        if count <= self.channel.max_redeliveries:
            self.restore_by_tag(tag, client=client, leftmost=leftmost)
            metrics.REDELIVERIES.inc()
            return
        raw = client.hget(self.unacked_key, tag)
        pipe = client.pipeline()
        self._remove_from_indices(tag, pipe).hdel(keys.REDELIVERIES_KEY, tag)
        if raw is not None:
            message = loads(raw)[0]
            queue = message.get("properties", {}).get("delivery_info", {}).get("routing_key")
            dead_letter_inbox.park_message(
                pipe, queue, f"poison message: handed back {count - 1} times by workers "
                "that died or gave up while holding it", json.dumps(message))
        pipe.execute()


class Channel(kredis.Channel):  # type: ignore[misc]
    QoS = QoS
    max_redeliveries = 5
    from_transport_options = (*kredis.Channel.from_transport_options, "max_redeliveries")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.consumer_id = uuid.uuid4().hex
        self._scripts: dict[str, str] = {}
        self._block_next = False
        self._pending: tuple[str, str] = ("", "")
        self._stranded: list[tuple[str, bytes]] = []
        self._registered_queues: tuple[str, ...] = ()
        self._sync_client: Any = None
        self.watching = _Watching(self)

    def _create_client(self, asynchronous: bool = False) -> Any:
        """One client for the channel's pool (made again if the pool is replaced): kombu made
        one per acknowledgement, claim and renewal, 15 % of the consumer's CPU (py-spy)."""
        if asynchronous:
            return super()._create_client(asynchronous=True)
        pool = self.pool
        if self._sync_client is None or self._sync_client.connection_pool is not pool:
            self._sync_client = super()._create_client()
        return self._sync_client

    # --- scripts ------------------------------------------------------------------------
    def _sha(self, client: Any, source: str) -> str:
        sha = self._scripts.get(source)
        if sha is None:
            sha = self._scripts[source] = client.script_load(source)
        return sha

    def _eval(self, client: Any, source: str, script_keys: list[str], args: list[Any]) -> Any:
        try:
            return client.evalsha(self._sha(client, source), len(script_keys),
                                  *script_keys, *args)
        except NoScriptError:  # Redis restarted and forgot the script
            self._scripts.clear()
            return client.evalsha(self._sha(client, source), len(script_keys),
                                  *script_keys, *args)

    # --- consuming ----------------------------------------------------------------------
    def _queue_keys(self, queues: Iterable[str]) -> list[str]:
        return [self._q_for_pri(q, pri) for pri in self.priority_steps for q in queues]

    def _brpop_start(self, timeout: float | None = None) -> None:
        queues = self._queue_cycle.consume(len(self.active_queues))
        if not queues:
            return
        conn = self.client.connection
        sha = self._scripts.get(POP_LUA, "")
        if self._block_next or not sha:
            with self.conn_or_acquire() as client:
                if self._block_next:
                    self._register_consumer(client, queues)
                else:
                    sha = self._sha(client, POP_LUA)
        self._in_poll = conn
        self._brpop_sent_at = time.monotonic()
        if self._block_next:
            key, block_s = self.watching.block_on(queues)
            self._pending = ("BLMOVE", key)
            conn.send_command("BLMOVE", key, keys.inflight_key(self.consumer_id, key),
                              "RIGHT", "LEFT", block_s)
        else:
            self._pending = ("EVALSHA", "")
            script_keys = [self.unacked_key, self.unacked_index_key,
                           keys.DEAD_LETTER_INBOX_KEY, *self._queue_keys(queues)]
            conn.send_command("EVALSHA", sha, len(script_keys), *script_keys,
                              time.time(), UNDECODABLE, self._room())

    def _brpop_read(self, **options: Any) -> bool:
        kind, key = self._pending
        try:
            try:
                reply = self.client.parse_response(self.client.connection, kind, **options)
            except NoScriptError:
                self._scripts.clear()
                raise virtual.Empty() from None
            except self.connection_errors:
                self.client.connection.disconnect()
                raise
            except ResponseError as exc:  # a full Redis: the pop was refused whole
                _log_refused("a pop", exc)
                time.sleep(REFUSED_PAUSE_S)
                raise virtual.Empty() from None
        finally:
            self._in_poll = None
            self._flush_brpop_reauth()
        delivered = self._received(kind, key, reply) + self._claim_stranded()
        if not delivered:
            raise virtual.Empty()
        self.deliver_all(delivered)
        return True

    def deliver_all(self, delivered: list[tuple[str, bytes]]) -> None:
        for dest, item in delivered:
            queue = dest.rsplit(self.sep, 1)[0]
            self._queue_cycle.rotate(queue)
            try:
                self.connection._deliver(loads(item), queue)
            except Exception as exc:  # kombu could not even build a message from it
                self._undeliverable(item, queue, exc)

    def _undeliverable(self, item: bytes, queue: str, exc: Exception) -> None:
        """Park a recorded message kombu cannot turn into a message (a body that is not
        base64, say), and forget it, in one transaction; if Redis refuses, it stays
        recorded as unacked and comes back (counted) after the visibility timeout."""
        tag = loads(item)["properties"]["delivery_tag"]  # the pop script checked it is there
        reason = f"undeliverable message: {type(exc).__name__}: {exc}"[:500]
        try:
            with self.conn_or_acquire() as client:
                pipe = client.pipeline(transaction=True)
                dead_letter_inbox.park_message(pipe, queue, reason, item.decode("utf-8",
                                                                                "replace"))
                self.qos._remove_from_indices(tag, pipe).execute()
        except Exception as refused:
            _log_refused("parking an undeliverable message", refused)

    def _room(self) -> int:
        """How many messages prefetch still allows us to take."""
        estimate = self.qos.can_consume_max_estimate()
        return max(1, min(POP_MOST, estimate if estimate is not None else POP_MOST))

    def _received(self, kind: str, key: str, reply: Any) -> list[tuple[str, bytes]]:
        """Decide what a pop's reply delivers (a BLMOVE's is claimed by
        ``_claim_stranded``), and whether to block or sweep next."""
        if kind == "EVALSHA":
            if not reply:
                self._block_next = True  # everything is empty: block for a while
                return []
            pairs = zip(reply[::2], reply[1::2], strict=True)
            return [(dest.decode() if isinstance(dest, bytes) else dest, item)
                    for dest, item in pairs if item]
        self._block_next = False  # after a block, sweep every queue again
        if reply is not None:
            self._stranded.append((key, reply))  # in our in-flight list: claimed next
        return []

    def _claim_stranded(self) -> list[tuple[str, bytes]]:
        """Claim what BLMOVE moved into our in-flight list. A claim a full Redis refuses
        leaves the message there, and it is claimed again on the next read."""
        claimed = []
        while self._stranded:
            key, item = self._stranded[0]
            try:
                with self.conn_or_acquire() as client:
                    result = self._eval(
                        client, CLAIM_LUA,
                        [keys.inflight_key(self.consumer_id, key), self.unacked_key,
                         self.unacked_index_key, keys.DEAD_LETTER_INBOX_KEY],
                        [time.time(), UNDECODABLE, item, key])
            except ResponseError as exc:
                _log_refused("a claim", exc)
                break
            self._stranded.pop(0)
            self.watching.claimed(key)
            if result == 1:
                claimed.append((key, item))
        return claimed

    def _register_consumer(self, client: Any, queues: list[str]) -> None:
        """Before a BLMOVE into our in-flight list: make sure others can find and recover it."""
        wanted = tuple(sorted(queues))
        if wanted == self._registered_queues:
            return
        lease_ms = int(self.visibility_timeout * 1000)
        client.set(keys.consumer_lease_key(self.consumer_id), "1", px=lease_ms)
        client.hset(keys.CONSUMERS_KEY, self.consumer_id, json.dumps(list(wanted)))
        self._registered_queues = wanted

    # --- leases and recovery ------------------------------------------------------------
    def renew(self, client: Any, delivered: list[Any]) -> None:
        """Say we are alive and still hold ``delivered``."""
        pipe = client.pipeline(transaction=False)
        pipe.set(keys.consumer_lease_key(self.consumer_id), "1",
                 px=int(self.visibility_timeout * 1000))
        if self._registered_queues:  # re-register if a stall let others recover us
            pipe.hset(keys.CONSUMERS_KEY, self.consumer_id,
                      json.dumps(list(self._registered_queues)))
        if delivered:
            now = time.time()
            pipe.zadd(self.unacked_index_key, dict.fromkeys(delivered, now), xx=True)
        pipe.execute()

    def recover_orphans(self, client: Any) -> int:
        return int(self._eval(client, RECOVER_LUA, [keys.CONSUMERS_KEY],
                              [keys.consumer_lease_key(""), keys.inflight_key("", "")[:-1]]))

    def close(self) -> None:
        self.watching.stop()
        if not self._closing:
            try:
                with self.conn_or_acquire() as client:
                    client.delete(keys.consumer_lease_key(self.consumer_id))
                    self.recover_orphans(client)
            except Exception:
                pass
        super().close()


class _Watching:
    """A channel's queue watchers (with an event loop only): threads blocking on the queues
    other than the first, and what they moved into its in-flight lists, handed to the loop's
    thread."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self.threads: dict[str, _Watcher] = {}
        self.woken: collections.deque[tuple[str, bytes]] = collections.deque()
        self._turn = 0

    def block_on(self, queues: list[str]) -> tuple[str, float]:
        """The queue the channel's connection blocks on, and for how long: the first (by
        name) while threads watch the others, else each in turn for a moment."""
        wake = getattr(self.channel.connection, "wake", None)
        if wake is None or len(queues) == 1:
            self._turn += 1
            return (queues[(self._turn - 1) % len(queues)],
                    BLOCK_S if len(queues) > 1 else FIRST_BLOCK_S)
        first, *others = sorted(queues)
        if set(self.threads) != set(others):
            self.stop()
            self.threads = {key: _Watcher(self.channel, key, wake) for key in others}
            for watcher in self.threads.values():
                watcher.start()
        return first, FIRST_BLOCK_S

    def claimed(self, key: str) -> None:
        watcher = self.threads.get(key)
        if watcher is not None:
            watcher.free.set()  # it may take the next one

    def stop(self) -> None:
        """Stop the watchers, and return once none can move a message any more: a block
        still waiting could otherwise take a message into an in-flight list after a close
        has handed those back, and no one would recover it. Each block is cut short with
        ``CLIENT UNBLOCK`` (an ACL that refuses it makes the wait one block at most)."""
        watchers, self.threads = list(self.threads.values()), {}
        for watcher in watchers:
            watcher.stopped = True
            watcher.free.set()
        if not watchers:
            return
        with contextlib.suppress(Exception):  # Redis away: its blocks end with it
            client = self.channel.client
            for watcher in watchers:
                if watcher.client_id is not None:
                    client.client_unblock(watcher.client_id)
        for watcher in watchers:
            watcher.join(WATCHED_BLOCK_S + WATCHER_RETRY_S)

    def deliver(self) -> None:
        """Claim and deliver what the watchers moved (on the loop's thread), while prefetch
        allows; what it does not wait in our in-flight lists, recorded under our lease."""
        channel = self.channel
        while self.woken:
            channel._stranded.append(self.woken.popleft())
        if channel._stranded and not channel.closed and channel.qos.can_consume():
            channel.deliver_all(channel._claim_stranded())


class _Watcher(threading.Thread):
    """Blocks on one queue with a connection of its own and moves a message into the
    channel's in-flight list for it, then wakes the loop and waits until the loop has
    claimed it: it holds one message at most. Stops (``stopped``) within one block.

    A channel's close stops its watchers and waits for them before it hands back what the
    consumer holds (``_Watching.stop``). A message a watcher moves for a consumer given up
    for dead without a close (its lease lapsed: a stall, a connection lost) is never claimed:
    unclaimed for a block, the consumer is registered again with it, without a lease, so the
    next recovery by any worker hands it back (recovery forgets a consumer it found dead)."""

    def __init__(self, channel: Channel, key: str, wake: Any) -> None:
        super().__init__(name=f"watch {key}", daemon=True)
        self.channel, self.key, self.wake = channel, key, wake
        self.inflight = keys.inflight_key(channel.consumer_id, key)
        self.free = threading.Event()
        self.free.set()
        self.stopped = False
        # Its connection's id in Redis, for ``CLIENT UNBLOCK`` (None until it has one), and
        # whether to ask for it (an ACL may refuse ``CLIENT ID``: then it is waited out).
        self.client_id: int | None = None
        self.ask_id = True

    def run(self) -> None:
        # A connection of its own (not one from the pool per call), so its id stays known.
        client = self.channel.Client(connection_pool=self.channel.pool,
                                     single_connection_client=True)
        while not self.stopped and not self.channel.closed:
            if not self.free.wait(WATCHED_BLOCK_S):
                self._register(client)  # a message unclaimed this long: the loop stopped
                continue
            try:
                if self.client_id is None and self.ask_id:
                    self.client_id = self._own_id(client)
                if self.stopped:
                    break
                item = client.blmove(self.key, self.inflight, WATCHED_BLOCK_S, "RIGHT", "LEFT")
            except Exception as exc:  # Redis away or refusing: the loop's connection says so
                log.debug("queue watcher: %r", exc)
                self.client_id = None  # a new connection will have another
                time.sleep(WATCHER_RETRY_S)
                continue
            if item is not None:
                self.free.clear()
                self.channel.watching.woken.append((self.key, item))
                self.wake()
        client.close()

    def _own_id(self, client: Any) -> int | None:
        try:
            return int(client.client_id())
        except ResponseError:  # refused (NOPERM): never asked again
            self.ask_id = False
            return None

    def _register(self, client: Any) -> None:
        try:
            client.hset(keys.CONSUMERS_KEY, self.channel.consumer_id,
                        json.dumps(list(self.channel._registered_queues)))
        except Exception as exc:  # tried again a block later
            log.debug("queue watcher: %r", exc)


class _Doorbell:
    """A pipe the watchers wake the loop with; rung and closed under one lock, so a ring
    after the close never writes to a descriptor since given to something else."""

    def __init__(self) -> None:
        self.readable, self.writable = os.pipe()
        os.set_blocking(self.readable, False)
        os.set_blocking(self.writable, False)
        self.lock = threading.Lock()
        self.open = True

    def ring(self) -> None:
        with self.lock, contextlib.suppress(BlockingIOError):  # full: the loop is woken
            if self.open:
                os.write(self.writable, b"!")

    def drain(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            while os.read(self.readable, 512):
                pass

    def close(self) -> None:
        with self.lock:
            if self.open:
                self.open = False
                os.close(self.readable)
                os.close(self.writable)


class Transport(kredis.Transport):  # type: ignore[misc]
    Channel = Channel
    wake: Any = None  # rings the doorbell, once the transport runs on an event loop

    def register_with_event_loop(self, connection: Any, loop: Any) -> None:
        """Besides kombu's: the doorbell the queue watchers wake the loop with, and a check
        each turn of the loop for what they moved (prefetch may have had no room before)."""
        super().register_with_event_loop(connection, loop)
        if self.wake is None:
            self._doorbell = _Doorbell()
            self.wake = self._doorbell.ring
        self._loop = loop
        loop.add_reader(self._doorbell.readable, self._woken)
        loop.on_tick.add(self._deliver_woken)

    def _woken(self) -> None:
        self._doorbell.drain()
        self._deliver_woken()

    def _deliver_woken(self) -> None:
        for channel in self.cycle._channels:
            if channel.watching.woken or channel._stranded:
                channel.watching.deliver()

    def close_connection(self, connection: Any) -> None:
        super().close_connection(connection)
        if self.wake is not None:
            self._loop.remove_reader(self._doorbell.readable)
            self._loop.on_tick.discard(self._deliver_woken)
            self._doorbell.close()
            self.wake = None
