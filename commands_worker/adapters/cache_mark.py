"""Noticing that the read cache lost what was written to it, so the worker heals it without
an operator (docs/contract.md, "The read cache heals itself").

Every second the worker's housekeeping advances a mark in the cache (``hf:v1:cache-mark``,
raised only, never lowered: several workers share it) and reads what it held before. The
cache lost writes when the mark is gone after a worker saw one (flushed, or a Redis restarted
without its data), or went back below the highest value this worker saw (a failover to a
replica that lagged, or a restore from an older snapshot). At a worker's start, no mark while
the store holds requests means the same. Writes of the last second before a failover can
still go unnoticed: see the docs.
"""

from __future__ import annotations

from typing import Final

import redis

from shared import keys

# Raise the mark to ARGV[1] if it is lower (or absent); answer what it was.
_ADVANCE: Final = """
local before = redis.call('GET', KEYS[1])
if not before or tonumber(before) < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[1])
end
return before
"""


class CacheMark:
    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self._advance = client.register_script(_ADVANCE)
        self.highest_seen: float | None = None

    def check(self, now: float, store_has_requests: bool) -> str | None:
        """Advance the mark; why the cache must be healed, or None when it holds what was
        written. Raises redis.RedisError when the cache is away."""
        raw = self._advance(keys=[keys.CACHE_MARK_KEY], args=[repr(now)])
        before = float(raw) if raw is not None else None
        seen, self.highest_seen = self.highest_seen, max(
            v for v in (self.highest_seen, before, now) if v is not None)
        if before is None:
            if seen is not None:
                return "the read cache is empty: flushed, or restarted without its data"
            return ("the read cache holds no mark while the store holds requests: emptied "
                    "while no worker ran") if store_has_requests else None
        if seen is not None and before < seen:
            return (f"the read cache went back {seen - before:.1f} s: a failover to a replica "
                    "that lagged, or restored from an older snapshot")
        return None
