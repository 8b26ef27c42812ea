"""Celery's consumer, made to keep what it would otherwise throw away.

Celery acknowledges and drops a message it cannot decode, whose task it does not know, or
whose content type it refuses (pickle). Each such message is parked whole, with its reason, in
the dead-letter inbox before it is acknowledged; the worker moves it into the store.
"""

from __future__ import annotations

import json
from typing import Any

from celery.worker.consumer import Consumer as CeleryConsumer

from commands_worker.adapters.broker import dead_letter_inbox


def _raw_text(message: Any) -> str:
    raw = getattr(message, "_raw", None)
    if raw is not None:
        return json.dumps(raw, default=str)
    body = message.body
    return body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body)


def park_dead_letter(message: Any, reason: str) -> None:
    queue = (message.delivery_info or {}).get("routing_key")
    with message.channel.conn_or_acquire() as client:
        dead_letter_inbox.park_message(client, queue, reason, _raw_text(message))


class Consumer(CeleryConsumer):  # type: ignore[misc]
    def on_unknown_message(self, body: Any, message: Any) -> None:
        park_dead_letter(message, "unknown message format: not a Celery task message")
        super().on_unknown_message(body, message)

    def on_unknown_task(self, body: Any, message: Any, exc: Exception) -> None:
        task = (message.headers or {}).get("task")
        park_dead_letter(message, f"unknown task {task!r}: no such command")
        super().on_unknown_task(body, message, exc)

    def on_invalid_task(self, body: Any, message: Any, exc: Exception) -> None:
        park_dead_letter(message, f"invalid task message: {exc}")
        super().on_invalid_task(body, message, exc)

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        park_dead_letter(message, f"undecodable message ({message.content_type}): {exc}")
        super().on_decode_error(message, exc)
