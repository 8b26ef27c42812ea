"""Celery's consumer, made to keep what it would otherwise throw away, and to survive what it
would otherwise die of.

Celery acknowledges and drops a message it cannot decode, whose task it does not know, or
whose content type it refuses (pickle); and a message that breaks its own dispatch (a task
name that is a list, say) raises out of it and restarts the consumer, again and again. Each
such message is parked whole, with its reason, in the dead-letter inbox before it is
acknowledged; the worker moves it into the store.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from celery.worker.consumer import Consumer as CeleryConsumer

from commands_worker.adapters.broker import dead_letter_inbox

log = logging.getLogger("hostfactory.worker")


def _raw_text(message: Any) -> str:
    raw = getattr(message, "_raw", None)
    if raw is not None:
        return json.dumps(raw, default=str)
    body = message.body
    return body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body)


def park_dead_letter(message: Any, reason: str) -> None:
    queue = (message.delivery_info or {}).get("routing_key")
    with message.channel.conn_or_acquire() as client:
        dead_letter_inbox.park_message(client, queue if isinstance(queue, str) else None,
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
    """Stop holding a message (our transport's QoS.forget): it stays recorded as unacked,
    and comes back after the visibility timeout instead of being renewed for ever."""
    drop = getattr(message.channel.qos, "forget", None)
    if drop is not None:
        drop(message.delivery_tag)


class Consumer(CeleryConsumer):  # type: ignore[misc]
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
