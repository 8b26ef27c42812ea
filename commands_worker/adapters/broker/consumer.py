"""Celery's consumer, made to keep what it would otherwise throw away, and to survive what it
would otherwise die of.

Celery acknowledges and drops a message it cannot decode, whose task it does not know, or
whose content type it refuses (pickle); and a message that breaks its own dispatch (a task
name that is a list, say) raises out of it and restarts the consumer, again and again. Each
such message is parked whole, with its reason, in the dead-letter inbox before it is
acknowledged; the worker moves it into the store.

On RabbitMQ two more things: Celery's native delayed delivery (a topic-exchange scheme for
countdowns on quorum queues) is left out, as this worker holds a delayed message itself; and a
contract queue that someone declared with other arguments (a classic queue made by a
producer's Celery before the worker first ran) is consumed as it is, with an error in the log
saying what it costs, instead of the worker failing to start.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable
from typing import Any

import redis
from celery.worker.consumer import Consumer as CeleryConsumer

from commands_worker.adapters.broker import dead_letter_inbox
from shared import brokers

log = logging.getLogger("hostfactory.worker")
# The Redis holding the dead-letter inbox (set by the worker's app: the broker itself, or the
# read cache when the broker is RabbitMQ).
_inbox: list[Callable[[], redis.Redis]] = []


def use_inbox(client: Callable[[], redis.Redis]) -> None:
    _inbox[:] = [client]


def _raw_text(message: Any) -> str:
    """The message as kombu's virtual transports keep it (``_raw``), or, for a py-amqp
    message, an envelope of the same shape (body base64), so a letter reads and replays the
    same whichever broker it came from."""
    raw = getattr(message, "_raw", None)
    if raw is not None:
        return json.dumps(raw, default=str)
    body = message.body if isinstance(message.body, bytes) else str(message.body).encode()
    properties = {k: v for k, v in (message.properties or {}).items()
                  if k != "application_headers"}
    info = message.delivery_info or {}
    return json.dumps({
        "body": base64.b64encode(body).decode(), "content-type": message.content_type,
        "content-encoding": message.content_encoding,
        "headers": message.headers if isinstance(message.headers, dict) else {},
        "properties": {**properties, "body_encoding": "base64", "delivery_info": {
            "exchange": info.get("exchange"), "routing_key": info.get("routing_key")}},
    }, default=str)


def park_dead_letter(message: Any, reason: str) -> None:
    queue = (message.delivery_info or {}).get("routing_key")
    dead_letter_inbox.park_message(_inbox[0](), queue if isinstance(queue, str) else None,
                                   reason, _raw_text(message))


def park_and_settle(message: Any, reason: str) -> None:
    """Park the message and acknowledge it; if it cannot be parked now (Redis refuses
    writes), hand it back instead, so it is tried again rather than lost."""
    try:
        park_dead_letter(message, reason)
    except Exception:
        log.exception("could not park a refused message; handing it back",
                      extra={"event": "park_failed", "reason": reason})
        _settle(message, requeue=True)
        return
    _settle(message, requeue=False)


def _settle(message: Any, requeue: bool) -> None:
    try:
        if requeue:
            message.reject(requeue=True)
        else:
            message.ack()
    except Exception:
        log.exception("could not settle a refused message; it comes back after the "
                      "visibility timeout")
        forget(message)


def forget(message: Any) -> None:
    """Stop holding a message. On Redis (our transport's QoS.forget) it stays recorded as
    unacked, and comes back after the visibility timeout instead of being renewed for ever;
    on RabbitMQ it is handed back now (or, if even that fails, when the channel closes)."""
    qos = getattr(message.channel, "qos", None)
    drop = getattr(qos, "forget", None)
    if drop is not None:
        drop(message.delivery_tag)
        return
    try:
        message.reject(requeue=True)
    except Exception:
        log.debug("could not hand a message back; it returns when the channel closes",
                  exc_info=True)


class Blueprint(CeleryConsumer.Blueprint):  # type: ignore[misc]
    default_steps = [step for step in CeleryConsumer.Blueprint.default_steps
                     if not step.endswith(":DelayedDelivery")]


class Consumer(CeleryConsumer):  # type: ignore[misc]
    Blueprint = Blueprint

    def connect(self) -> Any:
        connection = super().connect()
        if connection.transport.driver_type == "amqp":
            for queue, error in brokers.adopt_declared_queues(
                    self.app.amqp.queues.values(), connection):
                log.error(f"command queue {brokers.MISMATCH_WORDS}", extra={
                    "event": "queue_mismatch", "queue": queue, "error": error})
        return connection

    def create_task_handler(self, *args: Any, **kwargs: Any) -> Callable[[Any], Any]:
        handle = super().create_task_handler(*args, **kwargs)

        def on_task_received(message: Any) -> Any:
            try:
                return handle(message)
            except Exception as exc:
                park_and_settle(message, f"unreadable message: {exc!r}"[:500])
                return None

        return on_task_received

    def on_unknown_message(self, body: Any, message: Any) -> None:
        park_and_settle(message, "unknown message format: not a Celery task message")

    def on_unknown_task(self, body: Any, message: Any, exc: Exception) -> None:
        headers = message.headers if isinstance(message.headers, dict) else {}
        task = headers.get("task")
        park_and_settle(message, f"unknown task {task!r}: no such command"[:500])

    def on_invalid_task(self, body: Any, message: Any, exc: Exception) -> None:
        park_and_settle(message, f"invalid task message: {exc}"[:500])

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        park_and_settle(message, f"undecodable message ({message.content_type}): {exc}"[:500])
