"""Settings: one typed object built from the environment, with defaults that run on one box."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

DEFAULT_REDIS_URL = "redis://localhost:6379/0"
DEFAULT_STORE_URL = "sqlite:///var/hostfactory.sqlite3"


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from exc


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise ValueError(f"{name} must be a number, got {raw!r}") from exc


@dataclass(frozen=True)
class Settings:
    redis_url: str = DEFAULT_REDIS_URL
    broker_url: str = DEFAULT_REDIS_URL
    cache_url: str = DEFAULT_REDIS_URL
    cache_read_url: str = DEFAULT_REDIS_URL
    store_url: str = DEFAULT_STORE_URL
    templates_file: Path | None = None
    query_host: str = "127.0.0.1"
    query_port: int = 8080
    query_workers: int = 1
    command_retention_s: int = 7 * 24 * 3600
    # A message a worker holds but has not acknowledged comes back after this long without
    # a lease renewal from its worker (live workers renew every visibility_timeout_s / 4).
    visibility_timeout_s: float = 30.0
    # Deliveries of one message to workers that died holding it before it is dead-lettered.
    max_redeliveries: int = 5
    # Retries (with backoff) of a command whose store or cache is unreachable.
    max_retries: int = 8
    log_level: str = "INFO"
    # Bearer tokens the query service accepts; empty: no authentication.
    query_api_tokens: tuple[str, ...] = ()
    query_max_wait_s: int = 60

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        redis_url = env.get("REDIS_URL") or DEFAULT_REDIS_URL
        cache_url = env.get("CACHE_URL") or redis_url
        templates = env.get("TEMPLATES_FILE")
        return cls(
            redis_url=redis_url,
            broker_url=env.get("BROKER_URL") or redis_url,
            cache_url=cache_url,
            cache_read_url=env.get("CACHE_READ_URL") or cache_url,
            store_url=env.get("STORE_URL") or DEFAULT_STORE_URL,
            templates_file=Path(templates) if templates else None,
            query_host=env.get("QUERY_HOST") or "127.0.0.1",
            query_port=_int(env, "QUERY_PORT", 8080),
            query_workers=_int(env, "QUERY_WORKERS", 1),
            command_retention_s=_int(env, "COMMAND_RETENTION_S", 7 * 24 * 3600),
            visibility_timeout_s=_float(env, "BROKER_VISIBILITY_TIMEOUT_S", 30.0),
            max_redeliveries=_int(env, "MAX_REDELIVERIES", 5),
            max_retries=_int(env, "COMMAND_MAX_RETRIES", 8),
            log_level=env.get("LOG_LEVEL") or "INFO",
            query_api_tokens=tuple(t.strip() for t in env.get("QUERY_API_TOKENS", "").split(",")
                                   if t.strip()),
            query_max_wait_s=_int(env, "QUERY_MAX_WAIT_S", 60),
        )
