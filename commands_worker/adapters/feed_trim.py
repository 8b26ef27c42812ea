"""Keep the provider feed bounded without losing a launch: trim it to about ``FEED_MAXLEN``
entries, but never past an entry some consumer group has not acknowledged.

Redis 7.0's ``XADD MAXLEN`` trims whatever a group still has to read, and the events are
gone (a provider far behind would never launch them). So the projector adds without a bound,
and the worker's housekeeping trims here: the cut is the older of the length bound and each
group's *safe point* (its oldest pending entry, or the entry after the last one delivered to
it). A group that is far behind holds the feed long; its lag is a metric with an alert, and a
group gone for good is removed by its operator (``XGROUP DESTROY hf:v1:feed GROUP``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import redis

from shared import keys

# At most this many entries are removed in one pass (one XRANGE of ids): a backlog is worked
# off over a few passes instead of one large read.
TRIM_STEP: Final = 10_000


@dataclass(frozen=True)
class GroupState:
    name: str
    lag: int | None  # entries not delivered yet (None: Redis cannot tell, entries deleted)
    pending: int  # delivered, not acknowledged
    safe_from: str  # entries older than this id are acknowledged by the group
    missed: bool  # an entry it had not acknowledged was deleted before it could


def _id(value: Any) -> tuple[int, int]:
    text = value.decode() if isinstance(value, bytes) else str(value)
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def _text(parts: tuple[int, int]) -> str:
    return f"{parts[0]}-{parts[1]}"


def groups(client: redis.Redis) -> list[GroupState]:
    """Every consumer group of the feed, with where it stands."""
    stream = keys.FEED_STREAM_KEY
    try:
        info: Any = client.xinfo_stream(stream)
        found: Any = client.xinfo_groups(stream)
    except redis.ResponseError:  # no feed yet
        return []
    max_deleted = _id(info.get("max-deleted-entry-id") or "0-0")
    first = info.get("first-entry")
    first_id = _id(first[0]) if first else None
    states = []
    for group in found:
        name = group["name"].decode() if isinstance(group["name"], bytes) else group["name"]
        delivered = _id(group["last-delivered-id"])
        safe = (delivered[0], delivered[1] + 1)
        oldest_pending = None
        if group["pending"]:
            summary: Any = client.xpending(stream, name)
            oldest_pending = _id(summary["min"])
            safe = min(safe, oldest_pending)
        # Deleted before it read them, or read and deleted before it acknowledged them.
        missed = delivered < max_deleted or (
            oldest_pending is not None and (first_id is None or oldest_pending < first_id))
        states.append(GroupState(name, group.get("lag"), int(group["pending"]), _text(safe),
                                 missed))
    return states


def trim(client: redis.Redis, maxlen: int) -> int:
    """Trim the feed toward ``maxlen`` entries, keeping whatever a group has not
    acknowledged; returns how many entries were removed."""
    stream = keys.FEED_STREAM_KEY
    excess = int(client.xlen(stream)) - maxlen
    if excess <= 0:
        return 0
    states = groups(client)
    safe = min((_id(g.safe_from) for g in states), default=None)
    oldest: Any = client.xrange(stream, count=1)
    if not oldest or (safe is not None and safe <= _id(oldest[0][0])):
        return 0  # the oldest entry is one a group still needs
    rows: Any = client.xrange(stream, count=min(excess, TRIM_STEP))
    last = _id(rows[-1][0])
    cut = (last[0], last[1] + 1)
    if safe is not None:
        cut = min(cut, safe)
    # Exact, not "~": a whole radix node may hold entries a group still needs.
    return int(client.xtrim(stream, minid=_text(cut), approximate=False))
