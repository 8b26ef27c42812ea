"""What a message is to the worker once admitted, and what is to be done with it: the plain
tuples that cross the pool's process boundary (``BatchItem`` in, ``Verdict`` out), and the
headers that carry a message's retry budgets and first arrival across its retries. Pure: no
Celery, no store, no Redis."""

from __future__ import annotations

import enum
from typing import Any, Final, NamedTuple


class Action(enum.Enum):
    ACK = "ack"          # settled: applied, refused or parked as a dead letter
    RETRY = "retry"      # send again after ``delay_s`` with the named budget spent once more
    REQUEUE = "requeue"  # hand back as if the worker had died (counted: poison detection)


class BatchItem(NamedTuple):
    command_id: str  # kwargs' command_id, else the Celery task id; a valid id
    task: str
    args: list[Any]
    kwargs: dict[str, Any]
    queue: str | None
    waits: int = 0
    outages: int = 0
    refusal: str = ""  # set: refused at admission; recorded as rejected, never applied
    due_at: float = 0.0  # a retry (or a producer's countdown) held until then
    # When the worker first took the message (kept across its retries): a machine report
    # without observed_at is as old as its arrival, so reports keep the order they came in.
    arrived_at: float = 0.0


class Verdict(NamedTuple):
    action: Action
    delay_s: float = 0.0
    budget: str = ""  # with RETRY: "waits" or "outages"


ACK: Final = Verdict(Action.ACK)
REQUEUE: Final = Verdict(Action.REQUEUE)
# The message headers that carry the two budgets, and the first arrival, across retries.
WAITS_HEADER: Final = "hf_waits"
OUTAGES_HEADER: Final = "hf_outages"
ARRIVED_HEADER: Final = "hf_arrived"
# An arrival a retry carries is believed this far back, no further (a producer may forge it:
# at worst its report counts as older than it is, within the day; never from the future).
MAX_ARRIVED_AGO_S: Final = 86_400.0


def _count(headers: dict[str, Any], name: str) -> int:
    value = headers.get(name)
    return value if isinstance(value, int) and 0 <= value < 1_000_000 else 0


def budgets_of(headers: dict[str, Any]) -> tuple[int, int]:
    """The retry budgets a message has spent (nonsense counts as none)."""
    return _count(headers, WAITS_HEADER), _count(headers, OUTAGES_HEADER)


def arrived_of(headers: dict[str, Any], now: float) -> float:
    """When the message first arrived: what its retry carries (within a day, never ahead
    of now), else now."""
    value = headers.get(ARRIVED_HEADER)
    if isinstance(value, int | float) and not isinstance(value, bool) and \
            now - MAX_ARRIVED_AGO_S <= value <= now:
        return float(value)
    return now


def budget_headers(item: BatchItem) -> dict[str, float]:
    return {WAITS_HEADER: item.waits, OUTAGES_HEADER: item.outages,
            ARRIVED_HEADER: item.arrived_at}
