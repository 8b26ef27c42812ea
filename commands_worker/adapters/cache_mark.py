"""Noticing that the read cache lost what was written to it, so the worker heals it without
an operator (docs/contract.md, "The read cache heals itself").

Every second the worker's watcher advances a mark in the cache (``hf:v1:cache-mark``, the
time it was written, raised only, never lowered: several workers share it), reads what it held
before, and reads the cache server's identity (``run_id``). The cache lost writes when:

- the mark is gone after a worker saw one (flushed, or a Redis restarted without its data):
  anything may be missing;
- the server is another one than at the last check (a Sentinel failover promoted a replica,
  or Redis restarted, perhaps from an older snapshot): it holds every write made before the
  mark it holds was written (one replication stream, in order), and may lack any made after;
- the mark went back below the highest value this worker saw (the same, noticed without the
  identity: a failover between two checks that kept no run_id change in view).

At a worker's start, no mark while the store holds requests means anything may be missing,
and a mark older than the store's last recorded projection means the writes since it may be.
What to re-project is the store's business (``maintenance.heal_cache``): everything projected
since the mark the cache holds, or, without one, everything.
"""

from __future__ import annotations

from dataclasses import dataclass
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


@dataclass(frozen=True)
class Loss:
    reason: str
    # The newest time the cache is known to hold every write of; None: it may lack anything.
    holds_until: float | None


class CacheMark:
    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self._advance = client.register_script(_ADVANCE)
        self.highest_seen: float | None = None
        self.server: str | None = None

    def check(self, now: float, store_has_requests: bool,
              last_projected: float | None = None) -> Loss | None:
        """Advance the mark; what the cache lost, or None when it holds what was written.
        At the first check, ``store_has_requests`` and ``last_projected`` (when the store
        last recorded a projection) tell what it should hold. Raises redis.RedisError when
        the cache is away."""
        server = str(self.client.info("server").get("run_id", ""))
        raw = self._advance(keys=[keys.CACHE_MARK_KEY], args=[repr(now)])
        before = float(raw) if raw is not None else None
        seen, self.highest_seen = self.highest_seen, max(
            v for v in (self.highest_seen, before, now) if v is not None)
        known, self.server = self.server, server
        if before is None:
            if seen is not None:
                return Loss("the read cache is empty: flushed, or restarted without its data",
                            None)
            return Loss("the read cache holds no mark while the store holds requests: "
                        "emptied while no worker ran", None) if store_has_requests else None
        if seen is None and last_projected is not None and last_projected > before + 1.0:
            return Loss(f"the read cache's mark is {last_projected - before:.1f} s older than "
                        "the store's last projection: it failed over or was restored while no "
                        "worker watched", before)
        if known is not None and server != known:
            return Loss(f"the read cache is another server (run_id {known[:8]}… → "
                        f"{server[:8]}…): a failover or a restart; it holds what was written "
                        f"until {now - before:.1f} s ago", before)
        if seen is not None and before < seen:
            return Loss(f"the read cache went back {seen - before:.1f} s: a failover to a "
                        "replica that lagged, or restored from an older snapshot", before)
        return None
