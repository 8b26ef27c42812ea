"""Raw broker messages as a producer, buggy or hostile, can push them onto a queue: kombu's
Redis envelope around a Celery protocol 2 body, every part of which a test may spoil."""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

CREATE = "commands.create_request"
UPDATE = "commands.update_machine_status"
REQUESTS_QUEUE = "commands.requests"


def body_of(kwargs: Any, args: Any = None) -> bytes:
    return json.dumps([[] if args is None else args, kwargs,
                       {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]
                      ).encode()


def envelope(task: Any, body: bytes | str, *, task_id: str | None = None,
             content_type: str = "application/json", encoding: str = "utf-8",
             queue: str = REQUESTS_QUEUE, headers: dict[str, Any] | None = None,
             drop: tuple[str, ...] = ()) -> dict[str, Any]:
    """An envelope as kombu's Redis transport stores it (``body`` base64 unless a str)."""
    task_id = task_id or str(uuid.uuid4())
    marker = str(uuid.uuid4())  # stays in the envelope whatever a test spoils
    all_headers: dict[str, Any] = {
        "lang": "py", "task": task, "id": task_id, "root_id": task_id, "parent_id": None,
        "group": None, "retries": 0, "eta": None, "expires": None,
        "timelimit": [None, None], "argsrepr": "", "kwargsrepr": "", "origin": "test",
        **(headers or {})}
    for name in drop:
        all_headers.pop(name, None)
    return {
        "body": body if isinstance(body, str) else base64.b64encode(body).decode(),
        "content-encoding": encoding, "content-type": content_type, "headers": all_headers,
        "properties": {"correlation_id": marker, "reply_to": "", "delivery_mode": 2,
                       "delivery_info": {"exchange": queue, "routing_key": queue},
                       "priority": 0, "body_encoding": "base64",
                       "delivery_tag": str(uuid.uuid4())}}


def encoded(message: dict[str, Any]) -> str:
    return json.dumps(message)


def marker_of(message: dict[str, Any]) -> str:
    return str(message["properties"]["correlation_id"])


def amqp_parts(message: dict[str, Any] | bytes) -> tuple[bytes, dict[str, Any], str, str,
                                                        str | None]:
    """Body, headers, content type, encoding and correlation id (the marker) of a Redis
    envelope as a producer would publish the same message to RabbitMQ. What AMQP cannot carry
    is carried as it can: headers that are not an object become none, integers beyond 64 bits
    become text."""
    if isinstance(message, bytes):
        return message, {}, "application/data", "binary", None
    body = message.get("body", "")
    try:
        data = base64.b64decode(body, validate=True)
    except (ValueError, TypeError):
        data = str(body).encode()
    headers = message.get("headers")
    marker = (message.get("properties") or {}).get("correlation_id")
    return (data, _amqp_table(headers) if isinstance(headers, dict) else {},
            str(message.get("content-type") or "application/data"),
            str(message.get("content-encoding") or "binary"),
            marker if isinstance(marker, str) else None)


def _amqp_table(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _amqp_table(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_amqp_table(v) for v in value]
    if isinstance(value, int) and not isinstance(value, bool) and not -2**63 <= value < 2**63:
        return str(value)
    return value
