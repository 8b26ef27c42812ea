"""Send a dead letter through again, e.g. after the missing template was added. Only ever to
the contract's queues: a letter's own routing key is what a hostile producer chose."""

from __future__ import annotations

import base64
import json
from typing import Any

import redis
from celery import Celery
from kombu import Connection

from commands_worker.service_layer.ports import DeadLetter
from shared import brokers, names

# Headers a broker sets on delivery; a replayed message starts its count again.
_BROKER_HEADERS = ("x-delivery-count", "x-death", "x-first-death-exchange",
                   "x-first-death-queue", "x-first-death-reason")


def replay(letter: DeadLetter, broker_url: str, inbox: redis.Redis) -> str:
    """Re-send ``letter`` (already marked replayed in the store); says what was sent."""
    raw: dict[str, Any] = letter.raw
    if raw.get("kind") == "command":
        task = raw.get("task")
        if task not in names.QUEUE_OF_TASK:
            raise LookupError(f"dead letter {letter.id}: {task!r} is not a command")
        _send_command(broker_url, raw, names.QUEUE_OF_TASK[task])
        return f"{letter.id}: re-sent {task} {letter.command_id}"
    queue = raw.get("queue") or letter.queue
    body = raw.get("body")
    if queue not in names.ALL_QUEUES or not isinstance(body, str):
        raise LookupError(f"dead letter {letter.id} has no command queue or body to send again")
    if brokers.is_amqp(broker_url):
        _publish_raw(broker_url, queue, body, letter.id)
        return f"{letter.id}: published the raw message again to {queue}"
    inbox.lpush(queue, body)
    return f"{letter.id}: pushed the raw message back onto {queue} ({len(body)} bytes)"


def _send_command(broker_url: str, raw: dict[str, Any], queue: str) -> None:
    producer = Celery("hostfactory-replay", broker=broker_url, set_as_current=False)
    producer.conf.update(brokers.producer_conf(broker_url))
    try:
        # Same task id, same command id: the replay is the same command, applied once.
        producer.send_task(raw["task"], args=raw.get("args") or (), kwargs=raw["kwargs"],
                           task_id=raw["id"], queue=queue, **brokers.send_options(broker_url))
    finally:
        producer.close()


def _publish_raw(broker_url: str, queue: str, text: str, letter_id: int | None) -> None:
    """The parked envelope's body, content type and headers, published as they came (with
    the broker's confirm), so the worker judges the very message again."""
    try:
        envelope = json.loads(text)
        body = envelope["body"]
        data = (base64.b64decode(body) if envelope.get("properties", {}).get("body_encoding")
                == "base64" else str(body).encode())
        headers = {k: v for k, v in (envelope.get("headers") or {}).items()
                   if k not in _BROKER_HEADERS}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise LookupError(f"dead letter {letter_id}: its raw message is not an envelope this "
                          f"broker can publish ({exc})") from exc
    [declared] = [q for q in brokers.command_queues(broker_url) if q.name == queue]
    with Connection(broker_url, transport_options={"confirm_publish": True}) as connection:
        connection.Producer().publish(
            data, exchange=declared.exchange, routing_key=queue, declare=[declared],
            headers=headers, content_type=envelope.get("content-type") or "application/data",
            content_encoding=envelope.get("content-encoding") or "binary",
            delivery_mode=2, retry=True, confirm_timeout=brokers.CONFIRM_TIMEOUT_S)
