"""What every provider of this package does with the feed: join its consumer group, and
step until stopped, riding out a feed or broker that is away."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import redis

from shared import keys

log = logging.getLogger("hostfactory.provider")


def join_group(feed: redis.Redis, group: str) -> None:
    """The consumer group, created at the feed's end the first time (new work only)."""
    try:
        feed.xgroup_create(keys.FEED_STREAM_KEY, group, id="$", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def run(join: Callable[[], None], step: Callable[[], None],
        stop_after_s: float | None = None) -> None:
    until = None if stop_after_s is None else time.monotonic() + stop_after_s
    joined = False
    while until is None or time.monotonic() < until:
        try:
            if not joined:
                join()
                joined = True
            step()
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            log.warning("feed or broker unreachable; retrying", extra={"error": str(exc)})
            time.sleep(1.0)
