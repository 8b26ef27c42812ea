"""Which broker a ``BROKER_URL`` names, and how the contract's queues are declared on it.

Redis (``redis://``, ``rediss://``, kombu's ``sentinel://``) is the embedded default. RabbitMQ
(``amqp://``, ``amqps://``, ``pyamqp://``) is the production broker for sites that must lose no
command with a node: the contract's queues are then **quorum queues** (Raft-replicated), and
every producer this project ships waits for the broker's publisher confirm before it says a
command was accepted. Either may be Celery's failover list, ``url;url;url``.

A queue's declaration must be the same wherever it is made, or RabbitMQ refuses the second one
(``PRECONDITION_FAILED - inequivalent arg 'x-queue-type'``): the one home of that declaration
is ``command_queues`` below, and docs/rabbitmq.md says how a third party's Celery declares the
same (or nothing at all).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlparse

from shared import names

if TYPE_CHECKING:
    from kombu import Queue

AMQP_SCHEMES: Final = frozenset({"amqp", "amqps", "pyamqp"})
REDIS_SCHEMES: Final = frozenset({"redis", "rediss", "unix", "sentinel", "redis+socket"})
# kombu's in-process broker, for a producer in a unit test
OTHER_SCHEMES: Final = frozenset({"memory"})
QUORUM: Final[dict[str, Any]] = {"x-queue-type": "quorum"}
# How long a producer waits for RabbitMQ's confirm before it says the broker did not take a
# command (it may still have: a resend is harmless, commands are idempotent by command_id).
CONFIRM_TIMEOUT_S: Final = 10.0


def urls(broker_url: str) -> list[str]:
    """The URLs of a failover list (``;``-separated, as Celery and kombu read it)."""
    return [u.strip() for u in broker_url.split(";") if u.strip()]


def is_amqp(broker_url: str) -> bool:
    """True when the (first) broker URL names RabbitMQ."""
    first = urls(broker_url)
    return bool(first) and urlparse(first[0]).scheme in AMQP_SCHEMES


def is_plain_redis(broker_url: str) -> bool:
    """One Redis server, no failover list and no kombu Sentinel: producers of this project
    push Celery's message themselves there (``shared.wire``), without Celery."""
    return urls(broker_url) == [broker_url] and urlparse(broker_url).scheme in {
        "redis", "rediss", "unix"}


def check(broker_url: str) -> None:
    """Raise ValueError for a URL list this project cannot use: an unknown scheme, or Redis
    and RabbitMQ mixed in one failover list."""
    schemes = {urlparse(u).scheme for u in urls(broker_url)}
    if not schemes:
        raise ValueError("no broker URL")
    unknown = schemes - AMQP_SCHEMES - REDIS_SCHEMES - OTHER_SCHEMES
    if unknown:
        raise ValueError(f"unknown broker scheme {sorted(unknown)[0]!r}: use redis:// or "
                         "amqp:// (or their TLS forms)")
    if schemes & AMQP_SCHEMES and schemes & REDIS_SCHEMES:
        raise ValueError("a failover list must name one kind of broker, not Redis and "
                         "RabbitMQ together")


def command_queues(broker_url: str) -> list[Queue]:
    """The contract's queues as every component of this project declares them: on RabbitMQ
    durable quorum queues, each bound to a direct exchange of its own name."""
    from kombu import Exchange, Queue  # here: settings read this module, and need no kombu

    arguments = dict(QUORUM) if is_amqp(broker_url) else None
    return [Queue(q, Exchange(q, "direct", durable=True), routing_key=q, durable=True,
                  queue_arguments=arguments) for q in names.ALL_QUEUES]


def producer_conf(broker_url: str, connect_timeout_s: float | None = None) -> dict[str, Any]:
    """Celery settings for a producer of commands: the contract's queue declarations, and on
    RabbitMQ publisher confirms (a send returns only once the broker has the message)."""
    options: dict[str, Any] = {}
    if connect_timeout_s is not None:
        options.update(socket_connect_timeout=connect_timeout_s,
                       socket_timeout=connect_timeout_s)
    if is_amqp(broker_url):
        options["confirm_publish"] = True
    conf: dict[str, Any] = {
        "task_serializer": "json", "accept_content": ["json"],
        "broker_connection_retry_on_startup": True,
        "task_queues": command_queues(broker_url),
        "task_create_missing_queues": False,
        "broker_transport_options": options,
    }
    if connect_timeout_s is not None:
        # Fail within seconds when the broker is away, instead of retrying for long.
        conf.update(broker_connection_timeout=connect_timeout_s,
                    task_publish_retry_policy={"max_retries": 2, "interval_start": 0,
                                               "interval_step": 0.5, "interval_max": 1})
    return conf


def send_options(broker_url: str) -> dict[str, Any]:
    """Per-send options: a bounded wait for the confirm on RabbitMQ."""
    return {"confirm_timeout": CONFIRM_TIMEOUT_S} if is_amqp(broker_url) else {}


def adopt_declared_queues(queues: Iterable[Queue], connection: Any) -> list[tuple[str, str]]:
    """Declare each queue on a channel of its own. One that exists with other arguments (a
    classic queue a plain Celery producer made first) is used as it is: marked not to be
    declared again, and returned with RabbitMQ's words, for the caller to say in its log. So
    a mismatched declaration breaks neither a worker nor a producer of this project."""
    found = []
    for queue in queues:
        channel = connection.channel()
        try:
            queue(channel).declare()
        except connection.channel_errors as exc:
            queue.no_declare = True
            found.append((queue.name, str(exc)[:300]))
        finally:
            with contextlib.suppress(Exception):
                channel.close()
    return found


MISMATCH_WORDS: Final = ("exists with other arguments than this project declares; used as it "
                         "is, and not replicated unless it is a quorum queue (docs/rabbitmq.md)")
