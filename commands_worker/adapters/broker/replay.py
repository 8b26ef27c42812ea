"""Send a dead letter through again, e.g. after the missing template was added. Only ever to
the contract's queues: a letter's own routing key is what a hostile producer chose."""

from __future__ import annotations

from typing import Any

import redis
from celery import Celery

from commands_worker.service_layer.ports import DeadLetter
from shared import names


def replay(letter: DeadLetter, broker_url: str, broker: redis.Redis) -> str:
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
    broker.lpush(queue, body)
    return f"{letter.id}: pushed the raw message back onto {queue} ({len(body)} bytes)"


def _send_command(broker_url: str, raw: dict[str, Any], queue: str) -> None:
    producer = Celery("hostfactory-replay", broker=broker_url, set_as_current=False)
    producer.conf.update(task_serializer="json", accept_content=["json"])
    try:
        # Same task id, same command id: the replay is the same command, applied once.
        producer.send_task(raw["task"], args=raw.get("args") or (), kwargs=raw["kwargs"],
                           task_id=raw["id"], queue=queue)
    finally:
        producer.close()
