"""Long-poll wake-ups: one pub/sub subscription per process to the projector's announcements
(which replicas relay), fanned out to the waiting requests. A waiting poll costs an entry in
a dict and an event, not a Redis round trip per tick."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Iterator

from queries_service.cache import UNAVAILABLE, ReadCache
from queries_service.hot_views import LocalViews
from shared import keys

log = logging.getLogger("hostfactory.queries")
# How long a stopping service waits for its listeners to end.
STOP_WAIT_S = 5.0


class ViewNotifier:
    def __init__(self, cache: ReadCache, local: LocalViews) -> None:
        self.cache = cache
        self.local = local
        self.waiters: dict[str, list[tuple[int, asyncio.Event]]] = defaultdict(list)
        self.woken = 0  # long-polls woken by an announcement
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        # The primary announces first; a replica relays the same messages. Listening to both
        # wakes pollers as early as possible and survives either one going away.
        sources = [c for c in (self.cache.primary, self.cache.replica) if c is not None]
        self.local.sources = len(sources)
        self._tasks = [asyncio.create_task(self._listen_forever(c)) for c in sources]

    async def stop(self) -> None:
        """Cancel the listeners and wait for them, a few seconds at most (a stopping service
        must stop). A clean-clone CI run once hung here for 300 s: redis-py had let the
        cancellation pass (``_unless_cancelled``), and the listener listened on."""
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=STOP_WAIT_S)

    @contextlib.contextmanager
    def waiting(self, key: str, min_version: int) -> Iterator[asyncio.Event]:
        """Register before reading, so a write between the read and the wait is not missed."""
        entry = (min_version, asyncio.Event())
        self.waiters[key].append(entry)
        try:
            yield entry[1]
        finally:
            waiting = self.waiters.get(key)
            if waiting is not None:
                waiting.remove(entry)
                if not waiting:
                    del self.waiters[key]

    def waiting_count(self) -> int:
        return sum(len(w) for w in self.waiters.values())

    def dispatch(self, data: bytes) -> None:
        key, _, version_text = data.decode("utf-8", "replace").rpartition(" ")
        self.local.invalidate(key)
        waiting = self.waiters.get(key)
        if not waiting or not version_text.isdigit():
            return
        version = int(version_text)
        for min_version, event in waiting:
            if version >= min_version and not event.is_set():
                event.set()
                self.woken += 1

    async def _listen_forever(self, client: object) -> None:
        while True:
            try:
                await self._listen(client)
            except asyncio.CancelledError:
                raise
            except (*UNAVAILABLE, RuntimeError):
                _unless_cancelled()  # stopped meanwhile: end rather than listen again
                self._wake_everyone()  # waiters re-read rather than sleep through an outage
                await asyncio.sleep(0.5)

    async def _listen(self, client: object) -> None:
        pubsub = client.pubsub()  # type: ignore[attr-defined]
        live = False
        try:
            await pubsub.subscribe(keys.VIEWS_CHANNEL)
            _unless_cancelled()
            live = True
            self.local.source_up()
            while True:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5.0)
                _unless_cancelled()
                if message is not None and message["type"] == "message":
                    self.dispatch(message["data"])
        finally:
            if live:
                self.local.source_down()
            with contextlib.suppress(Exception):
                await pubsub.aclose()

    def _wake_everyone(self) -> None:
        for waiting in self.waiters.values():
            for _, event in waiting:
                event.set()


def _unless_cancelled() -> None:
    """Raise ``CancelledError`` if this task was asked to stop. redis-py (8.1) can let a
    cancellation pass: of listeners stopped in their first 4 ms, one in five came back from
    ``SUBSCRIBE`` as if never cancelled and listened on for good (28-30 of 150;
    tests/integration/test_notifications.py)."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
