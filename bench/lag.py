"""Projection lag from outside: for each command, a long-poll on its request's view is opened
just before the command is sent, and the lag is the time from the send to that poll's answer.

The producer keeps up with the rate asked: messages are encoded before the run (kombu's Redis
envelope around a Celery protocol 2 body, as any Celery client sends them); at its scheduled
time each is handed to one sender on one connection, which pushes whatever is due in one
pipeline (LPUSH each) and stamps the send time; the same asyncio loop holds the polls (raw
HTTP/1.1 on asyncio streams: no client library's overhead). The achieved rate and how late
sends were against their schedule are reported with the figures.

Load: a create, then two machine reports for a request created about a second earlier (so a
report never races its request), and so on. Each poll asks for the version the command makes
(``min_version``): 1 for a create, 2 and 3 for the two reports.
"""

from __future__ import annotations

import asyncio
import base64
import json
import statistics
import time
import uuid
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

LEAD_S = 0.02  # the poll is opened this long before its command is sent
WAIT_S = 10


@dataclass
class Planned:
    at: float
    queue: str
    message: bytes
    request_id: str
    min_version: int
    sent: float = 0.0
    answered: float = 0.0
    status: int = 0
    behind_ms: float = 0.0  # how late the send was against its schedule


def _message(task: str, queue: str, kwargs: dict[str, Any]) -> bytes:
    task_id = str(uuid.uuid4())
    body = json.dumps([[], kwargs, {"callbacks": None, "errbacks": None, "chain": None,
                                    "chord": None}]).encode()
    return json.dumps({
        "body": base64.b64encode(body).decode(), "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {"lang": "py", "task": task, "id": task_id, "root_id": task_id,
                    "parent_id": None, "group": None, "retries": 0, "eta": None,
                    "expires": None, "timelimit": [None, None], "argsrepr": "",
                    "kwargsrepr": "", "origin": "bench"},
        "properties": {"correlation_id": task_id, "reply_to": "", "delivery_mode": 2,
                       "delivery_info": {"exchange": queue, "routing_key": queue},
                       "priority": 0, "body_encoding": "base64",
                       "delivery_tag": str(uuid.uuid4())}}).encode()


def plan(rate: float, duration_s: float, start: float) -> list[Planned]:
    """Creates, and two reports each for the request created ``rate / 3`` creates before."""
    run = uuid.uuid4().hex[:6]
    creates_per_s = max(1, int(rate / 3))
    out: list[Planned] = []
    created: list[str] = []
    reports: dict[str, int] = {}
    n = 0
    while n / rate < duration_s:
        at = start + n / rate
        if n % 3 == 0 or len(created) <= creates_per_s:
            request_id = f"lag{run}-{len(created)}"
            created.append(request_id)
            out.append(Planned(at, "commands.requests", _message(
                "commands.create_request", "commands.requests",
                {"template_id": "x86-large", "max_number": 2, "request_id": request_id}),
                request_id, 1))
        else:
            request_id = created[-creates_per_s - 1]
            machine = reports.get(request_id, 0)
            reports[request_id] = machine + 1
            out.append(Planned(at, "commands.machines", _message(
                "commands.update_machine_status", "commands.machines",
                {"machine_id": f"{request_id}-m{machine}", "status": "running",
                 "request_id": request_id}), request_id, 2 + machine))
        n += 1
    return [p for p in out if p.min_version <= 3]


async def _send(r: aioredis.Redis, due: asyncio.Queue[Planned | None]) -> None:
    """Push what is due, all of it in one pipeline, again and again."""
    now = asyncio.get_running_loop().time
    while True:
        batch = [await due.get()]
        while not due.empty():
            batch.append(due.get_nowait())
        items = [i for i in batch if i is not None]
        pipe = r.pipeline(transaction=False)
        for item in items:
            pipe.lpush(item.queue, item.message)
        sent, late = time.perf_counter(), now()
        for item in items:
            item.sent, item.behind_ms = sent, (late - item.at) * 1000
        await pipe.execute()
        if None in batch:
            return


async def _poll(host: str, port: int, item: Planned, due: asyncio.Queue[Planned | None]) -> None:
    now = asyncio.get_running_loop().time
    await asyncio.sleep(max(0.0, item.at - LEAD_S - now()))
    reader, writer = await asyncio.open_connection(host, port)
    path = f"/requests/{item.request_id}?min_version={item.min_version}&wait={WAIT_S}"
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    await asyncio.sleep(max(0.0, item.at - now()))
    due.put_nowait(item)
    status_line = await reader.readline()
    await reader.read()  # the rest, until the server closes
    item.answered = time.perf_counter()
    item.status = int(status_line.split()[1]) if status_line else 0
    writer.close()


async def _run(host: str, port: int, redis_url: str, rate: float,
               duration_s: float) -> list[Planned]:
    r = aioredis.from_url(redis_url)
    loop = asyncio.get_running_loop()
    items = plan(rate, duration_s, loop.time() + 0.5)
    due: asyncio.Queue[Planned | None] = asyncio.Queue()
    sender = asyncio.create_task(_send(r, due))
    await asyncio.gather(*(_poll(host, port, item, due) for item in items))
    due.put_nowait(None)
    await sender
    await r.aclose()
    return items


def measure(host: str, port: int, redis_url: str, rate: float,
            duration_s: float) -> dict[str, Any]:
    items = asyncio.run(_run(host, port, redis_url, rate, duration_s))
    sends = sorted(i.sent for i in items)
    lags = sorted((i.answered - i.sent) * 1000 for i in items)
    behind = sorted(i.behind_ms for i in items)
    late = [i for i in items if i.status != 200]
    achieved = (len(sends) - 1) / (sends[-1] - sends[0]) if len(sends) > 1 else 0.0
    return {"target_rate_per_s": round(rate, 1), "rate_per_s": round(achieved, 1),
            "commands": len(items), "not_answered_200": len(late),
            "send_behind_schedule_p99_ms": round(behind[int(len(behind) * 0.99) - 1], 2),
            "p50_ms": round(statistics.median(lags), 2),
            "p99_ms": round(lags[int(len(lags) * 0.99) - 1], 2), "max_ms": round(lags[-1], 2)}
