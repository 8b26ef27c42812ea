"""Redis clients from URLs: ``redis://``, ``rediss://`` (TLS), ACL ``user:password@`` and
``redis+sentinel://[user:password@]host:port[,host:port...]/service[/db]`` (a Sentinel-managed
primary, or one of its replicas for reads). A failover then needs no restart."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlparse

SENTINEL_SCHEME = "redis+sentinel"


@dataclass(frozen=True)
class SentinelTarget:
    hosts: list[tuple[str, int]]
    service: str
    db: int
    username: str | None
    password: str | None


def parse_sentinel(url: str) -> SentinelTarget | None:
    """The Sentinel target of ``url``, or None for a plain Redis URL."""
    parsed = urlparse(url)
    if parsed.scheme != SENTINEL_SCHEME:
        return None
    netloc = parsed.netloc.rpartition("@")[2]
    hosts = []
    for part in netloc.split(","):
        host, _, port = part.rpartition(":")
        if not host:
            host, port = port, "26379"
        hosts.append((host.strip("[]"), int(port)))
    path = [p for p in parsed.path.split("/") if p]
    if not path:
        raise ValueError(f"{SENTINEL_SCHEME} URL needs a service name: {url!r}")
    return SentinelTarget(hosts, path[0], int(path[1]) if len(path) > 1 else 0,
                          unquote(parsed.username) if parsed.username else None,
                          unquote(parsed.password) if parsed.password else None)


def sync_client(url: str, replica: bool = False, **kwargs: Any) -> Any:
    import redis
    from redis.sentinel import Sentinel

    target = parse_sentinel(url)
    if target is None:
        return redis.Redis.from_url(url, **kwargs)
    sentinel = Sentinel(target.hosts,  # type: ignore[no-untyped-call]
                        sentinel_kwargs={"socket_timeout": 1})
    connect = sentinel.slave_for if replica else sentinel.master_for
    return connect(target.service, db=target.db,  # type: ignore[no-untyped-call]
                   username=target.username, password=target.password, **kwargs)


def async_client(url: str, replica: bool = False, **kwargs: Any) -> Any:
    import redis.asyncio as aioredis
    from redis.asyncio.sentinel import Sentinel

    target = parse_sentinel(url)
    if target is None:
        # A burst of requests waits for a free connection rather than failing with
        # "Too many connections": the pool bounds this process's connections to Redis.
        pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=64, timeout=10,
                                                        **kwargs)
        return aioredis.Redis(connection_pool=pool)
    sentinel = Sentinel(target.hosts,  # type: ignore[no-untyped-call]
                        sentinel_kwargs={"socket_timeout": 1})
    connect = sentinel.slave_for if replica else sentinel.master_for
    return connect(target.service, db=target.db, username=target.username,
                   password=target.password, **kwargs)
