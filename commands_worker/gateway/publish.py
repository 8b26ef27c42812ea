"""How the gateway hands a checked command to the broker. Either way a command is answered
202 only once the broker holds it, and an Idempotency-Key a client chose is claimed first: the
same key with the same command is a retry (published again, applied once by the worker), with
another command or body it is refused (409), never silently dropped.

- ``RedisPublisher`` (a single ``redis://``, ``rediss://`` or ``unix://`` broker, the default):
  asynchronous, and every command that arrives while a round trip is in flight goes in the
  next one — one pipeline of ``LPUSH queue m1 m2 …`` per queue, and a short script per claimed
  key that claims and pushes atomically. Messages are built by ``shared.wire``
  (bench/README.md, "Speed, third round", has the profile and the figures).
- ``CeleryPublisher`` (RabbitMQ, a failover list, Sentinel): the project's Celery producer in a
  thread, with RabbitMQ's publisher confirm before the answer; the Idempotency-Key register in
  Redis (the broker's, or the read cache's on RabbitMQ).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import orjson
import redis
from starlette.concurrency import run_in_threadpool

from shared import brokers, names, wire
from shared.client import CommandClient
from shared.keys import gateway_key_of

log = logging.getLogger("hostfactory.gateway")


class KeyReused(Exception):
    """An Idempotency-Key (command id) sent before with another command or body."""


class Publisher(Protocol):
    async def publish(self, task: str, kwargs: dict[str, Any], chosen: bool) -> None:
        """Hand ``kwargs`` (checked) to the broker; ``chosen``: the client chose the id."""


def claim_mark(task: str, kwargs: dict[str, Any]) -> str:
    """What a command id is first sent as: the task and a digest of the body."""
    body = {k: v for k, v in kwargs.items() if k != "command_id" and v is not None}
    digest = hashlib.sha256(task.encode() + b"\0" + orjson.dumps(
        body, option=orjson.OPT_SORT_KEYS)).hexdigest()
    return f"{task} {digest}"


def key_reused(command_id: str, task: str, first: str) -> KeyReused:
    first_task = first.split(" ", 1)[0]
    return KeyReused(
        f"Idempotency-Key {command_id!r} was first used for {first_task}"
        + (" with another body" if first_task == task else "")
        + ": a key names one command; use a new key for a new command")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class IdempotencyKeys:
    """The register of claimed command ids, kept as long as the worker keeps outcomes, for
    the thread-bound publisher."""

    def __init__(self, client: redis.Redis, retention_s: int) -> None:
        self.client = client
        self.retention_s = retention_s

    def claim(self, command_id: str, task: str, kwargs: dict[str, Any]) -> None:
        mark = claim_mark(task, kwargs)
        key = gateway_key_of(command_id)
        if self.client.set(key, mark, nx=True, ex=self.retention_s):
            return
        first = _text(self.client.get(key))
        if first != mark:
            raise key_reused(command_id, task, first)


class CeleryPublisher:
    def __init__(self, client: CommandClient, keys: IdempotencyKeys | None) -> None:
        self.client = client
        self.keys = keys

    async def publish(self, task: str, kwargs: dict[str, Any], chosen: bool) -> None:
        await run_in_threadpool(self._send, task, kwargs, chosen)

    def _send(self, task: str, kwargs: dict[str, Any], chosen: bool) -> None:
        if chosen and self.keys is not None:
            self.keys.claim(kwargs["command_id"], task, kwargs)
        self.client.send(task, kwargs, checked=True)


# KEYS: the claim, the queue; ARGV: the mark, its lifetime (s), the message. Pushes the message
# when the id is new or was first claimed by the same command; else answers the first mark.
CLAIM_AND_PUSH: Final = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then
  redis.call('LPUSH', KEYS[2], ARGV[3]) return 1
end
local first = redis.call('GET', KEYS[1])
if first == ARGV[1] then redis.call('LPUSH', KEYS[2], ARGV[3]) return 1 end
return first
"""


@dataclass
class _Pending:
    queue: str
    message: bytes
    done: asyncio.Future[None]
    claim: tuple[str, str, str] | None = None  # command id, task, mark


@dataclass
class RedisPublisher:
    client: Any  # redis.asyncio.Redis
    retention_s: int
    pending: list[_Pending] = field(default_factory=list)
    in_flight: asyncio.Task[None] | None = None
    # The connection held between round trips (a new one after a failure). One round trip at
    # a time: two or four in flight, each on its own connection, made smaller batches and cost
    # more CPU per command (bench/README.md, "Speed, third round").
    connection: Any = None

    async def publish(self, task: str, kwargs: dict[str, Any], chosen: bool) -> None:
        command_id = kwargs["command_id"]
        queue = names.QUEUE_OF_TASK[task]
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        claim = (command_id, task, claim_mark(task, kwargs)) if chosen else None
        self.pending.append(_Pending(queue, wire.redis_message(task, queue, command_id, kwargs),
                                     done, claim))
        self._start()
        await done

    def _start(self) -> None:
        """Start a round trip for what is pending, unless one is in flight: then what arrives
        meanwhile waits for it, and goes in the next."""
        if self.pending and self.in_flight is None:
            self.in_flight = asyncio.ensure_future(self._trip())
            self.in_flight.add_done_callback(self._done)

    def _done(self, _: asyncio.Task[None]) -> None:
        self.in_flight = None
        self._start()

    async def _trip(self) -> None:
        # Taken when the trip starts: what arrived since it was started goes in too.
        batch, self.pending = self.pending, []
        try:
            await self._send(batch)
        except Exception as exc:  # the connection failed: none of these is sure
            for item in batch:
                if not item.done.done():
                    item.done.set_exception(exc)

    async def _send(self, batch: list[_Pending]) -> None:
        plain: dict[str, list[_Pending]] = {}
        claimed = []
        for item in batch:
            if item.claim is None:
                plain.setdefault(item.queue, []).append(item)
            else:
                claimed.append(item)
        commands: list[tuple[Any, ...]] = [
            ("LPUSH", queue, *(i.message for i in items)) for queue, items in plain.items()]
        for item in claimed:
            assert item.claim is not None
            commands.append(("EVAL", CLAIM_AND_PUSH, 2, gateway_key_of(item.claim[0]),
                             item.queue, item.claim[2], self.retention_s, item.message))
        answers = await self._round_trip(commands)
        for items, answer in zip(plain.values(), answers, strict=False):
            for item in items:
                _settle(item, answer)
        for item, answer in zip(claimed, answers[len(plain):], strict=True):
            _settle(item, answer)

    async def _round_trip(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Write ``commands`` at once on the connection this publisher holds, then read their
        answers in order (an error answer is returned, not raised). Not redis-py's pipeline
        object: its per-call bookkeeping (a connection taken from and given back to the pool,
        a retry wrapper, a reset) was a third of the gateway's time under load."""
        pool = self.client.connection_pool
        connection = self.connection or await pool.get_connection()
        self.connection = None
        try:
            await connection.send_packed_command(connection.pack_commands(commands))
            answers: list[Any] = []
            for _ in commands:
                try:
                    answers.append(await connection.read_response())
                except redis.ResponseError as exc:
                    answers.append(exc)
        except BaseException:
            await connection.disconnect()
            await pool.release(connection)
            raise
        self.connection = connection
        return answers


def _settle(item: _Pending, answer: Any) -> None:
    if item.done.done():  # its client went away
        return
    if isinstance(answer, Exception):
        item.done.set_exception(answer)
    elif item.claim is not None and answer != 1:
        command_id, task, _ = item.claim
        item.done.set_exception(key_reused(command_id, task, _text(answer)))
    else:
        item.done.set_result(None)


def publisher_for(broker_url: str, cache_url: str, retention_s: int,
                  connect_timeout_s: float) -> Publisher:
    from shared.redis_urls import async_client, sync_client

    if brokers.is_plain_redis(broker_url):
        return RedisPublisher(async_client(broker_url, socket_timeout=connect_timeout_s,
                                           socket_connect_timeout=connect_timeout_s),
                              retention_s)
    keys_url = cache_url if brokers.is_amqp(broker_url) else broker_url
    keys = None
    if keys_url.startswith(("redis://", "rediss://", "unix://", "redis+sentinel://")):
        keys = IdempotencyKeys(sync_client(keys_url, socket_timeout=connect_timeout_s,
                                           socket_connect_timeout=connect_timeout_s),
                               retention_s)
    else:
        log.warning("idempotency keys are not checked for reuse: no Redis to keep them in",
                    extra={"event": "idempotency_unchecked"})
    return CeleryPublisher(CommandClient(broker_url, connect_timeout_s=connect_timeout_s),
                           keys)
