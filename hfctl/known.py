"""What a provider checks of a signed feed event before it acts: that it is still the pair's
current word. Signed events can be replayed by whoever can write to the feed; these checks
make a replayed or stale event do nothing. Reads the read cache's views only.

- ``acquire``: not past its deadline (the event's own, signed ``deadline_at``); its request
  is known to the pair, an acquire request, not final. A view not there yet means wait.
- ``return`` / ``release``: only the machines the pair knows as that request's are kept
  (the event's ``machines`` list is narrowed in place); none left: nothing to do.
"""

from __future__ import annotations

import json
import time
from typing import Any, Final

import redis

from shared import keys
from shared.views import FINAL_REQUEST_STATUSES

WAIT: Final = "wait"


def _view(raw: Any) -> dict[str, Any] | None:
    try:
        value = json.loads(raw) if raw else None
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def check(cache: redis.Redis, event: dict[str, Any], now: float | None = None) -> str | None:
    """None when the event may be acted on, ``WAIT`` when its request's view is not in the
    cache yet, else why it is refused."""
    if event.get("type") == "acquire":
        return _acquire(cache, event, time.time() if now is None else now)
    return _give_back(cache, event)


def _acquire(cache: redis.Redis, event: dict[str, Any], now: float) -> str | None:
    deadline = event.get("deadline_at")
    if not isinstance(deadline, int | float) or isinstance(deadline, bool):
        return "no deadline_at"
    if now > deadline:
        return "past its request's deadline"
    request_id = event.get("request_id")
    if not isinstance(request_id, str):
        return "no request_id"
    view = _view(cache.get(keys.request_summary_key(request_id)))
    if view is None:
        return WAIT
    if view.get("kind", "acquire") != "acquire" or view.get("status") in FINAL_REQUEST_STATUSES:
        return f"request {request_id} is not an open acquire request"
    if view.get("max_number") != event.get("machine_count"):
        return f"request {request_id} asked for {view.get('max_number')}, not " \
               f"{event.get('machine_count')}"
    return None


def _give_back(cache: redis.Redis, event: dict[str, Any]) -> str | None:
    listed = [m for m in event.get("machines") or []
              if isinstance(m, dict) and isinstance(m.get("machine_id"), str)]
    if not listed:
        return "no machines"
    views = cache.mget([keys.machine_key(m["machine_id"]) for m in listed])
    ours = []
    for ref, raw in zip(listed, views, strict=True):
        view = _view(raw)
        if view is None or view.get("request_id") != ref.get("request_id"):
            continue
        if event["type"] == "return" and view.get("return_request_id") != event.get(
                "request_id"):
            continue
        if event["type"] == "release" and not view.get("late"):
            continue
        ours.append(ref)
    event["machines"] = ours
    return None if ours else "none of its machines is one the pair gives back"
