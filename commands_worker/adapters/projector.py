"""Write view documents to the read cache, never moving a view backwards.

Every write is a compare-and-set in Lua: the stored document is replaced only by a newer
version, so replays, rebuilds and out-of-order projection are harmless. The same script keeps
the request indexes and announces the write on the views channel (long-polls, simulators).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

import orjson
import redis

from commands_worker.adapters import feed_trim, lua
from commands_worker.domain.errors import CacheUnavailable
from commands_worker.service_layer.ports import REPUBLISH, ViewDoc
from shared import feed, keys
from shared.views import REQUEST_STATUSES

_CAS_SCRIPT: Final = lua.source("project.lua")
_PUBLISH_SCRIPT: Final = lua.source("publish.lua")
_HISTORY_SCRIPT: Final = lua.source("history.lua")
_DOCS_PER_CALL: Final = 200
FEED_MAXLEN: Final = 100_000
_FEED_PREFIX: Final = keys.feed_published_key("")
# A request's history keeps its newest entries, this many.
HISTORY_MAX_ENTRIES: Final = 500


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
    def __init__(self, client: redis.Redis, feed_maxlen: int = FEED_MAXLEN,
                 signing_key: bytes | None = None) -> None:
        self.client = client
        self.feed_maxlen = feed_maxlen
        # Feed events carry an HMAC under this key (shared.feed): providers act on no entry
        # they cannot prove the pair wrote.
        self.signing_key = signing_key
        self._cas = client.register_script(_CAS_SCRIPT)
        self._publish = client.register_script(_PUBLISH_SCRIPT)
        self._history = client.register_script(_HISTORY_SCRIPT)

    def load_scripts(self) -> None:
        """Load the scripts into Redis (at start, and again when Redis says it lost them)."""
        for script in (self._cas, self._publish, self._history):
            self.client.script_load(script.script)

    def project(self, docs: Iterable[ViewDoc]) -> int:
        """Write the views, add the feed events and history entries, in one round trip;
        returns how many views replaced an older one."""
        views, events, told = _sorted_out(docs)
        if not (views or events or told):
            return 0
        try:
            try:
                return self._write(views, events, told)
            except redis.exceptions.NoScriptError:
                # Redis restarted, or a replica without our scripts was promoted: every
                # script is loaded and the whole pipeline runs again (each call is a
                # compare-and-set or marked once: running one twice changes nothing).
                self.load_scripts()
                return self._write(views, events, told)
        except redis.RedisError as exc:
            # Unreachable, a failover that demoted the primary under us (ReadOnlyError), or
            # full (OutOfMemoryError): the outbox keeps the documents, and the next attempt
            # finds the new primary or the room.
            raise CacheUnavailable(str(exc)) from exc

    def _write(self, views: list[ViewDoc], events: list[ViewDoc], told: list[ViewDoc]) -> int:
        """One pipeline of ``EVALSHA`` calls. Not redis-py's ``Script`` objects: a pipeline
        holding them asks Redis which scripts it has (``SCRIPT EXISTS``) before it runs, a
        second round trip in every projection."""
        pipe = self.client.pipeline(transaction=False)
        # Views first: a provider that reads an event finds its request's view.
        for first in range(0, len(views), _DOCS_PER_CALL):
            self._write_views(pipe, views[first:first + _DOCS_PER_CALL])
        view_calls = len(pipe.command_stack)
        for first in range(0, len(events), _DOCS_PER_CALL):
            self._publish_events(pipe, events[first:first + _DOCS_PER_CALL])
        for batch in told:
            self._add_history(pipe, batch)
        return sum(int(r) for r in pipe.execute()[:view_calls])

    def trim_feed(self) -> int:
        """Trim the feed toward its bound, never past what a provider has not acknowledged."""
        try:
            return feed_trim.trim(self.client, self.feed_maxlen)
        except redis.RedisError as exc:
            raise CacheUnavailable(str(exc)) from exc

    def _add_history(self, pipe: redis.client.Pipeline, batch: ViewDoc) -> None:
        """A transaction's history entries, each into its request's set, in one call."""
        sets: dict[str, int] = {}
        args: list[str | bytes | int] = [HISTORY_MAX_ENTRIES]
        for request_id, sequence, member in orjson.loads(batch.body):
            index = sets.setdefault(keys.history_key(request_id), len(sets) + 1)
            args += [index, sequence, member]
        pipe.evalsha(self._history.sha, len(sets), *sets, *args)

    def _write_views(self, pipe: redis.client.Pipeline, views: list[ViewDoc]) -> None:
        script_keys: list[str] = []
        args: list[str | bytes | int] = [keys.VIEWS_CHANNEL]
        for doc in views:
            doc_keys, doc_args = _keys_and_args(doc)
            script_keys += doc_keys
            args += doc_args
        pipe.evalsha(self._cas.sha, len(script_keys), *script_keys, *args)

    def _publish_events(self, pipe: redis.client.Pipeline, events: list[ViewDoc]) -> None:
        args: list[str | bytes | int] = [self.feed_maxlen, max(events[0].ttl_s, 60) * 1000]
        for event in events:
            event_id = event.key.removeprefix(_FEED_PREFIX)
            sig = (feed.signature(self.signing_key, event_id, event.status, event.body)
                   if self.signing_key else "")
            republish = "1" if event.version == REPUBLISH else "0"
            args += [event_id, event.status, event.body, sig, republish]
        event_keys = [keys.FEED_STREAM_KEY, *(e.key for e in events)]
        pipe.evalsha(self._publish.sha, len(event_keys), *event_keys, *args)


def _sorted_out(docs: Iterable[ViewDoc]) -> tuple[list[ViewDoc], list[ViewDoc], list[ViewDoc]]:
    """Views, feed events and history entries: each has its own way into Redis."""
    views: list[ViewDoc] = []
    events: list[ViewDoc] = []
    told: list[ViewDoc] = []
    for doc in docs:
        if doc.key.startswith(_FEED_PREFIX):
            events.append(doc)
        elif doc.key == keys.HISTORY_BATCH_KEY:
            told.append(doc)
        else:
            views.append(doc)
    return views, events, told
