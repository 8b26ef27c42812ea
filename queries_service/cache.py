"""Reading the read cache: a replica when configured, the primary when the replica is down
or behind what the caller has already seen."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Final

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared.redis_urls import async_client
from shared.settings import Settings

_VERSION_RE: Final = re.compile(rb'^\{"version":(\d+)')
UNAVAILABLE: Final = (RedisConnectionError, RedisTimeoutError, OSError)


def doc_version(doc: bytes) -> int:
    match = _VERSION_RE.match(doc)
    return int(match.group(1)) if match else 0


class CacheUnavailable(Exception):
    """Neither the replica nor the primary answered."""


# A replica is read only while it follows its primary: its link is up and it heard from the
# primary within this long (the primary pings replicas every 10 s by default). One that
# stopped replicating would otherwise answer stale views, and 404 for everything new.
MAX_REPLICA_SILENCE_S: Final = 25
REPLICA_CHECK_EVERY_S: Final = 1.0


@dataclass
class ReadCache:
    primary: aioredis.Redis
    replica: aioredis.Redis | None
    counters: dict[str, int] = field(default_factory=lambda: {
        "reads_replica": 0, "reads_primary": 0, "replica_fallbacks": 0, "fresh_reads": 0,
        "errors": 0})
    _replica_ok: bool = False
    _replica_checked_at: float = float("-inf")

    @classmethod
    def from_settings(cls, settings: Settings) -> ReadCache:
        def client(url: str, replica: bool) -> aioredis.Redis:
            made: aioredis.Redis = async_client(url, replica=replica, socket_timeout=2,
                                                socket_connect_timeout=1,
                                                health_check_interval=15)
            return made
        primary = client(settings.cache_url, replica=False)
        replica = None if settings.cache_read_url == settings.cache_url else client(
            settings.cache_read_url, replica=True)
        return cls(primary, replica)

    async def close(self) -> None:
        await self.primary.aclose()
        if self.replica is not None:
            await self.replica.aclose()

    async def replica_follows(self, fresh: bool = False) -> bool:
        """Whether the replica is fit to read from (checked at most once a second, unless
        ``fresh``)."""
        if self.replica is None:
            return False
        now = time.monotonic()
        if fresh or now - self._replica_checked_at >= REPLICA_CHECK_EVERY_S:
            self._replica_checked_at = now
            try:
                info = await self.replica.info("replication")
            except (*UNAVAILABLE, ResponseError):
                info = {}
            self._replica_ok = (info.get("role") == "slave"
                                and info.get("master_link_status") == "up"
                                and int(info.get("master_last_io_seconds_ago", -1))
                                in range(MAX_REPLICA_SILENCE_S + 1))
        return self._replica_ok

    async def _read(self, fn_name: str, *args: object, **kwargs: object) -> object:
        if self.replica is not None and await self.replica_follows():
            try:
                result = await getattr(self.replica, fn_name)(*args, **kwargs)
                self.counters["reads_replica"] += 1
                return result
            except UNAVAILABLE:
                self.counters["replica_fallbacks"] += 1
        try:
            result = await getattr(self.primary, fn_name)(*args, **kwargs)
        except UNAVAILABLE as exc:
            self.counters["errors"] += 1
            raise CacheUnavailable(str(exc)) from exc
        self.counters["reads_primary"] += 1
        return result

    async def get(self, key: str, min_version: int = 0) -> bytes | None:
        doc = await self._read("get", key)
        assert doc is None or isinstance(doc, bytes)
        if min_version and self.replica is not None and (doc is None or
                                                         doc_version(doc) < min_version):
            # The replica may lag: a caller who saw version N never gets an older answer.
            self.counters["fresh_reads"] += 1
            try:
                fresh = await self.primary.get(key)
            except UNAVAILABLE as exc:
                raise CacheUnavailable(str(exc)) from exc
            assert fresh is None or isinstance(fresh, bytes)
            return fresh
        return doc

    async def mget(self, keys: list[str]) -> list[bytes | None]:
        if not keys:
            return []
        docs = await self._read("mget", keys)
        assert isinstance(docs, list)
        return docs

    async def members(self, key: str) -> list[bytes]:
        """A sorted set's members, lowest score first."""
        rows = await self._read("zrange", key, 0, -1)
        assert isinstance(rows, list)
        return rows

    async def zrange_after(self, key: str, after: int, limit: int) -> list[tuple[bytes, float]]:
        rows = await self._read("zrange", key, f"({after}", "+inf", byscore=True,
                                withscores=True, offset=0, num=limit)
        assert isinstance(rows, list)
        return rows

    async def ping(self) -> str:
        """Which side answers reads now: ``replica`` or ``primary``."""
        if await self.replica_follows(fresh=True):
            return "replica"
        try:
            await self.primary.ping()
        except UNAVAILABLE as exc:
            raise CacheUnavailable(str(exc)) from exc
        return "primary"
