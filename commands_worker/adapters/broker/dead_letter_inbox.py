"""The dead-letter inbox: where the broker side parks what it refuses, until the worker moves
it into the store. The one home of the entry's format.

An entry is a JSON object ``{"queue", "reason", "at", "raw"}`` for a message as it came off
the queue (``raw``: its text), or ``{"queue", "reason", "at", "command"}`` for a decoded
command that could not be applied (``command``: ``Envelope.raw()``). Three writers use
``park_*`` below; the fourth is the transport's Lua pop (``lua/record.lua``), which writes the
``raw`` form for a message it cannot deliver. ``letter_from_entry`` reads them all.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any, cast

import redis

from commands_worker.service_layer.ports import PARKED_PREFIX, DeadLetter
from shared import keys

log = logging.getLogger("hostfactory.worker")


def entry(queue: str | None, reason: str, *, raw: str | None = None,
          command: dict[str, Any] | None = None) -> str:
    body: dict[str, Any] = {"queue": queue, "reason": reason, "at": time.time()}
    if command is not None:
        body["command"] = command
    else:
        body["raw"] = raw or ""
    return json.dumps(body)


def park_message(client: redis.Redis, queue: str | None, reason: str, raw: str) -> None:
    """A message as it came off a queue, refused before it was a command."""
    client.lpush(keys.DEAD_LETTER_INBOX_KEY, entry(queue, reason, raw=raw))
    log.warning("message dead-lettered", extra={"event": "dead_lettered", "reason": reason,
                                                "queue": queue})


def park_command(client: redis.Redis, command: dict[str, Any], queue: str | None,
                 reason: str) -> None:
    """A decoded command that could not be applied (its store was down too long)."""
    client.lpush(keys.DEAD_LETTER_INBOX_KEY, entry(queue, reason, command=command))


def letter_from_entry(item: bytes) -> DeadLetter:
    """The dead letter an inbox entry stands for, whichever writer made it."""
    entry_ = json.loads(item.decode("utf-8", "replace"))
    at = float(entry_.get("at") or time.time())
    reason = str(entry_.get("reason") or "undecodable message")
    command = entry_.get("command")
    if isinstance(command, dict):
        return DeadLetter(reason=reason, raw=command, first_at=at, last_at=at,
                          command_id=command.get("id"), task=command.get("task"),
                          queue=command.get("queue"))
    body = str(entry_.get("raw", ""))
    task, command_id = _task_and_id(body)
    return DeadLetter(
        reason=reason, raw={"kind": "message", "queue": entry_.get("queue"), "body": body},
        first_at=at, last_at=at, queue=entry_.get("queue"), task=task,
        command_id=f"{PARKED_PREFIX}{command_id}" if command_id else None)


def _task_and_id(body: str) -> tuple[str | None, str | None]:
    try:
        headers = json.loads(body).get("headers") or {}
        task, task_id = headers.get("task"), headers.get("id")
    except (ValueError, AttributeError):
        return None, None
    return (task if isinstance(task, str) else None,
            task_id if isinstance(task_id, str) else None)


def drain(client: redis.Redis, file: Callable[[DeadLetter], object], limit: int = 200) -> int:
    """Hand parked entries to ``file`` (which stores them), oldest first; one drainer at a
    time. An entry leaves the inbox only after it was filed."""
    if not client.set(keys.DEAD_LETTER_DRAIN_LOCK_KEY, "1", nx=True, px=30_000):
        return 0
    try:
        items = cast(list[bytes], client.lrange(keys.DEAD_LETTER_INBOX_KEY, -limit, -1))
        for item in reversed(items):
            file(letter_from_entry(item))
        if items:
            client.ltrim(keys.DEAD_LETTER_INBOX_KEY, 0, -len(items) - 1)
            log.warning("dead letters stored", extra={"event": "dead_letters_stored",
                                                      "count": len(items)})
        return len(items)
    finally:
        client.delete(keys.DEAD_LETTER_DRAIN_LOCK_KEY)
