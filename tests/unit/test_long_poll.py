"""A long-poll never sleeps through its update: the interleaving where the projector's
announcement lands while the poll's read is in flight, forced step by step."""

from __future__ import annotations

import asyncio

from queries_service.cache import doc_version
from queries_service.endpoints import QueryApp
from queries_service.hot_views import LocalViews
from queries_service.metrics import Metrics
from shared import keys
from shared.settings import Settings

KEY = keys.request_key("r1")


class SlowCache:
    """The first read is held until the test lets it go, and then answers the old view."""

    replica = None
    counters: dict[str, int] = {}

    def __init__(self) -> None:
        self.reading = asyncio.Event()
        self.release = asyncio.Event()
        self.reads = 0

    async def get(self, key: str, min_version: int = 0) -> bytes | None:
        self.reads += 1
        if self.reads == 1:
            self.reading.set()
            await self.release.wait()
            return b'{"version":1}'
        return b'{"version":2}'


def test_an_announcement_during_the_read_wakes_the_poll() -> None:
    async def scenario() -> bytes | None:
        cache = SlowCache()
        app = QueryApp(cache, Settings.from_env({}), LocalViews(), Metrics())  # type: ignore[arg-type]
        poll = asyncio.create_task(app.wait_for(KEY, min_version=2, wait_s=10))
        await cache.reading.wait()              # the poll's first read is in flight
        app.notifier.dispatch(f"{KEY} 2".encode())  # the new version is announced meanwhile
        cache.release.set()                     # the read returns the old version
        return await asyncio.wait_for(poll, 2)  # woken at once, not after its 10 s

    doc = asyncio.run(scenario())
    assert doc is not None and doc_version(doc) == 2
