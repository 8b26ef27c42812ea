"""How many messages wait on each command queue, on whichever broker holds them.

On Redis a queue is a list (``LLEN``) and what workers hold is our transport's ``unacked`` hash.
On RabbitMQ a passive declare answers the messages ready for delivery; what consumers hold
unacknowledged is not told over AMQP 0-9-1 (RabbitMQ's own ``rabbitmq_prometheus`` plugin
exports it), so ``in_flight`` is None there.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections import Counter as Tally
from typing import Any, Protocol

import redis
from kombu import Connection

from shared import brokers


class QueueReadings(Protocol):
    def depths(self, queues: tuple[str, ...]) -> dict[str, tuple[int, int | None]]:
        """Per queue: messages waiting, and messages held by workers (None: unknown)."""
        ...


class RedisQueues:
    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def depths(self, queues: tuple[str, ...]) -> dict[str, tuple[int, int | None]]:
        held = self._inflight()
        return {q: (int(self.client.llen(q)), held.get(q, 0))
                for q in queues}

    def _inflight(self) -> dict[str, int]:
        """Unacknowledged messages by queue, from the transport's ``unacked`` hash."""
        found: Tally[str] = Tally()
        for raw in self.client.hvals("unacked"):
            with contextlib.suppress(ValueError, TypeError, IndexError, AttributeError):
                found[str(json.loads(raw)[2])] += 1
        return dict(found)


class AmqpQueues:
    """One connection (with its failover list), opened on first use and again after a loss."""

    def __init__(self, broker_url: str) -> None:
        self.url = broker_url
        self.connection: Any = None
        self.lock = threading.Lock()

    def depths(self, queues: tuple[str, ...]) -> dict[str, tuple[int, int | None]]:
        with self.lock:
            try:
                return {q: (self._ready(q), None) for q in queues}
            except Exception:
                self._drop()
                raise

    def _ready(self, queue: str) -> int:
        if self.connection is None:
            self.connection = Connection(self.url, connect_timeout=5,
                                         transport_options={"socket_timeout": 5})
            self.connection.ensure_connection(max_retries=1)
        channel = self.connection.channel()
        try:
            _, ready, _ = channel.queue_declare(queue=queue, passive=True)
            return int(ready)
        except self.connection.channel_errors:  # not declared yet: nothing waits on it
            return 0
        finally:
            with contextlib.suppress(Exception):
                channel.close()

    def _drop(self) -> None:
        if self.connection is not None:
            with contextlib.suppress(Exception):
                self.connection.release()
        self.connection = None


def readings_for(broker_url: str, redis_client: redis.Redis) -> QueueReadings:
    """The readings for ``broker_url``; ``redis_client`` is its client when it is Redis."""
    if brokers.is_amqp(broker_url):
        return AmqpQueues(broker_url)
    return RedisQueues(redis_client)
