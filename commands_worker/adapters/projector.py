"""Write view documents to the read cache, never moving a view backwards.

Every write is a compare-and-set in Lua: the stored document is replaced only by a newer
version, so replays, rebuilds and out-of-order projection are harmless. The same script keeps
the request indexes and announces the write on the views channel (long-polls, simulators).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

import redis

from commands_worker.adapters import lua
from commands_worker.domain.errors import CacheUnavailable
from commands_worker.service_layer.ports import ViewDoc
from shared import keys
from shared.views import REQUEST_STATUSES

_CAS_SCRIPT: Final = lua.source("project.lua")
_DOCS_PER_CALL: Final = 200


def _keys_and_args(doc: ViewDoc) -> tuple[list[str], list[str | bytes | int]]:
    ttl_ms = doc.ttl_s * 1000
    if not doc.status:
        return [doc.key], [1, doc.version, doc.body, ttl_ms, 0, ""]
    request_id = doc.key.removeprefix(keys.request_key(""))
    others = [keys.requests_by_status_key(s) for s in REQUEST_STATUSES if s != doc.status]
    doc_keys = [doc.key, keys.REQUESTS_INDEX_KEY, keys.requests_by_status_key(doc.status),
                *others]
    return doc_keys, [len(doc_keys), doc.version, doc.body, ttl_ms, doc.seq, request_id]


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
            for first in range(0, len(docs), _DOCS_PER_CALL):
                script_keys: list[str] = []
                args: list[str | bytes | int] = [keys.VIEWS_CHANNEL]
                for doc in docs[first:first + _DOCS_PER_CALL]:
                    doc_keys, doc_args = _keys_and_args(doc)
                    script_keys += doc_keys
                    args += doc_args
                self._cas(keys=script_keys, args=args, client=pipe)
            return sum(int(r) for r in pipe.execute())
        except redis.RedisError as exc:
            # Unreachable, a failover that demoted the primary under us (ReadOnlyError), or
            # full (OutOfMemoryError): the outbox keeps the documents, and the next attempt
            # finds the new primary or the room.
            raise CacheUnavailable(str(exc)) from exc
