"""Write view documents to the read cache, never moving a view backwards.

Every write is a compare-and-set in Lua: the stored document is replaced only by a newer
version, so replays, rebuilds and out-of-order projection are harmless. The same script keeps
the request indexes and announces the write on the views channel (long-polls, simulators).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

import redis

from commands_worker.errors import CacheUnavailable
from commands_worker.ports import ViewDoc
from shared import keys
from shared.views import REQUEST_STATUSES

# KEYS[1] document; for requests also KEYS[2] the all-requests index, KEYS[3] the index of the
# new status and KEYS[4..] the other status indexes.
# ARGV: version, body, ttl ms (0: none), channel, index score, member.
_CAS_SCRIPT: Final = """
local cur = redis.call('GET', KEYS[1])
local v = tonumber(ARGV[1])
if cur then
  local cv = tonumber(string.match(cur, '^{"version":(%d+)'))
  if cv and cv >= v then return 0 end
end
local ttl = tonumber(ARGV[3])
if ttl > 0 then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ttl)
else
  redis.call('SET', KEYS[1], ARGV[2])
end
if #KEYS > 1 then
  redis.call('ZADD', KEYS[2], ARGV[5], ARGV[6])
  for i = 4, #KEYS do redis.call('ZREM', KEYS[i], ARGV[6]) end
  redis.call('ZADD', KEYS[3], ARGV[5], ARGV[6])
end
redis.call('PUBLISH', ARGV[4], KEYS[1] .. ' ' .. ARGV[1])
return 1
"""


def _keys_and_args(doc: ViewDoc) -> tuple[list[str], list[str | bytes | int]]:
    ttl_ms = doc.ttl_s * 1000
    if not doc.status:
        return [doc.key], [doc.version, doc.body, ttl_ms, keys.VIEWS_CHANNEL, 0, ""]
    request_id = doc.key.removeprefix(keys.request_key(""))
    others = [keys.requests_by_status_key(s) for s in REQUEST_STATUSES if s != doc.status]
    doc_keys = [doc.key, keys.REQUESTS_INDEX_KEY, keys.requests_by_status_key(doc.status),
                *others]
    return doc_keys, [doc.version, doc.body, ttl_ms, keys.VIEWS_CHANNEL, doc.seq, request_id]


class Projector:
    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self._cas = client.register_script(_CAS_SCRIPT)

    def project(self, docs: Iterable[ViewDoc]) -> int:
        """Write the documents in one round trip; returns how many replaced an older one."""
        docs = list(docs)
        if not docs:
            return 0
        try:
            pipe = self.client.pipeline(transaction=False)
            for doc in docs:
                doc_keys, args = _keys_and_args(doc)
                self._cas(keys=doc_keys, args=args, client=pipe)
            return sum(int(r) for r in pipe.execute())
        except (redis.ConnectionError, redis.TimeoutError, redis.ReadOnlyError) as exc:
            # ReadOnlyError: a failover demoted the primary under us. The outbox keeps the
            # documents; the next attempt finds the new primary.
            raise CacheUnavailable(str(exc)) from exc
