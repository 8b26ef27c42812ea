"""Send a dead letter through again, e.g. after the missing template was added."""

from __future__ import annotations

from typing import Any

from celery import Celery

from commands_worker.bootstrap import Deps


def replay(d: Deps, letter_id: int) -> str:
    letter = d.store.begin_replay(letter_id)
    if letter is None:
        raise LookupError(f"no dead letter {letter_id}")
    raw: dict[str, Any] = letter.raw
    if raw.get("kind") == "command":
        producer = Celery("hostfactory-replay", broker=d.settings.broker_url,
                          set_as_current=False)
        producer.conf.update(task_serializer="json", accept_content=["json"])
        try:
            # Same task id, same command id: the replay is the same command, applied once.
            producer.send_task(raw["task"], args=raw.get("args") or (), kwargs=raw["kwargs"],
                               task_id=raw["id"], queue=raw.get("queue") or letter.queue)
        finally:
            producer.close()
        return f"{letter_id}: re-sent {raw['task']} {letter.command_id}"
    queue = raw.get("queue") or letter.queue
    body = raw.get("body")
    if not queue or not isinstance(body, str):
        raise LookupError(f"dead letter {letter_id} has no queue or body to send again")
    d.broker.lpush(queue, body)
    return f"{letter_id}: pushed the raw message back onto {queue} ({len(body)} bytes)"

