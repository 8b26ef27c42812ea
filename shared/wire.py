"""A command as the broker holds it on Redis: a Celery protocol 2 message in kombu's Redis
envelope, byte for byte the shape ``Celery.send_task`` pushes (tests/unit/test_wire.py
compares the two, and a plain Celery worker runs what this builds).

Built here, not through kombu, for the one producer whose speed is its point: the command
gateway publishes many concurrent commands in one Redis round trip (``LPUSH queue m1 m2 …``),
where kombu's ``Producer.publish`` is ~0.8 ms of CPU and several round trips a message
(DESIGN.md, "Known hazards"; bench/README.md, "Speed, third round"). Every other producer sends
through Celery (shared/client.py). Nothing here imports kombu or Celery.
"""

from __future__ import annotations

import base64
import os
import socket
from functools import cache
from typing import Any, Final

import orjson

EMBED: Final = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
# kombu's delivery tag is str(uuid4()); any unique text will do (kombu and the worker only
# key their unacknowledged messages by it), and 128 random bits in hex cost a fifth as much.
MAX_REPR: Final = 1024  # Celery's task_argsrepr/kwargsrepr bound (saferepr's maxlen)


@cache
def _origin(pid: int) -> bytes:
    """Celery's ``origin`` header as JSON: ``gen<pid>@<host>`` (a fork is another process)."""
    return orjson.dumps(f"gen{pid}@{socket.gethostname()}")


def redis_message(task: str, queue: str, task_id: str, kwargs: dict[str, Any]) -> bytes:
    """The message ``send_task(task, kwargs=kwargs, task_id=task_id, queue=queue)`` pushes
    onto the Redis list ``queue``: the fixed parts joined as bytes around the JSON of the
    varying ones (6 µs against 9 for dumping the whole envelope as a dict; the unit test parses
    it and compares it with Celery's, key by key)."""
    body = base64.b64encode(orjson.dumps([[], kwargs, EMBED]))
    task_json, id_json = orjson.dumps(task), orjson.dumps(task_id)
    return b"".join((
        b'{"body":"', body,
        b'","content-encoding":"utf-8","content-type":"application/json","headers":{'
        b'"lang":"py","task":', task_json, b',"id":', id_json,
        b',"shadow":null,"eta":null,"expires":null,"group":null,"group_index":null,'
        b'"retries":0,"timelimit":[null,null],"root_id":', id_json,
        b',"parent_id":null,"argsrepr":"()","kwargsrepr":',
        orjson.dumps(repr(kwargs)[:MAX_REPR]),
        b',"origin":', _origin(os.getpid()),
        b',"ignore_result":null,"replaced_task_nesting":0,"stamped_headers":null,"stamps":{}},'
        b'"properties":{"correlation_id":', id_json,
        b',"reply_to":"","delivery_mode":2,"delivery_info":{"exchange":"","routing_key":',
        orjson.dumps(queue),
        b'},"priority":0,"body_encoding":"base64","delivery_tag":"',
        os.urandom(16).hex().encode(), b'"}}'))
