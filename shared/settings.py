"""Settings: one typed object built from the environment, with defaults that run on one box.

Every variable is typed and range-checked by pydantic-settings; a bad value stops the process
with an error that names the variable (``QUERY_PORT: Input should be less than or equal to
65535 (got '70000')``). The variable names are the operator contract (README, docs/).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Final, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from shared.hostfactory import DEFAULT_DEADLINE_S

DEFAULT_REDIS_URL: Final = "redis://localhost:6379/0"
DEFAULT_STORE_URL: Final = "sqlite:///var/hostfactory.sqlite3"

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
Port = Annotated[int, Field(ge=1, le=65535)]


class SettingsError(ValueError):
    """A setting's value cannot be used; the message names the variable."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(frozen=True, extra="ignore", case_sensitive=True,
                                      populate_by_name=False)

    redis_url: str = Field(DEFAULT_REDIS_URL, validation_alias="REDIS_URL", min_length=1)
    # Separate Redis for the broker and for the read cache; both default to REDIS_URL.
    broker_url: str = Field(DEFAULT_REDIS_URL, validation_alias="BROKER_URL", min_length=1)
    cache_url: str = Field(DEFAULT_REDIS_URL, validation_alias="CACHE_URL", min_length=1)
    # Where a query service reads (a replica); defaults to CACHE_URL.
    cache_read_url: str = Field(DEFAULT_REDIS_URL, validation_alias="CACHE_READ_URL",
                                min_length=1)
    # With a kombu ``sentinel://`` BROKER_URL: the name of the master.
    broker_sentinel_master: str | None = Field(None, validation_alias="BROKER_SENTINEL_MASTER")
    store_url: str = Field(DEFAULT_STORE_URL, validation_alias="STORE_URL", min_length=1)
    templates_file: Path | None = Field(None, validation_alias="TEMPLATES_FILE")
    query_host: str = Field("127.0.0.1", validation_alias="QUERY_HOST", min_length=1)
    query_port: Port = Field(8080, validation_alias="QUERY_PORT")
    query_workers: int = Field(1, validation_alias="QUERY_WORKERS", ge=1, le=64)
    # The query service's HTTP server: granian (the faster, measured in bench/README.md) or
    # uvicorn (its own bounded protocol: JSON even for requests it cannot parse).
    query_server: Literal["granian", "uvicorn"] = Field("granian",
                                                        validation_alias="QUERY_SERVER")
    # Where clients (hfctl, the simulator) reach a query service; defaults to QUERY_HOST:PORT.
    query_url: str = Field("http://127.0.0.1:8080", validation_alias="QUERY_URL")
    # Bearer tokens the query service accepts (comma-separated); empty: no authentication.
    query_api_tokens: Annotated[tuple[str, ...], NoDecode] = Field(
        (), validation_alias="QUERY_API_TOKENS")
    # The command gateway (python -m commands_worker.gateway): where it listens, how many
    # server processes, and its bearer tokens (comma-separated; empty: none needed).
    gateway_host: str = Field("127.0.0.1", validation_alias="GATEWAY_HOST", min_length=1)
    gateway_port: Port = Field(8081, validation_alias="GATEWAY_PORT")
    gateway_workers: int = Field(1, validation_alias="GATEWAY_WORKERS", ge=1, le=64)
    gateway_api_tokens: Annotated[tuple[str, ...], NoDecode] = Field(
        (), validation_alias="GATEWAY_API_TOKENS")
    # The longest long-poll ``wait`` a query service accepts.
    query_max_wait_s: int = Field(60, validation_alias="QUERY_MAX_WAIT_S", ge=1, le=3600)
    # How long outcomes and their dedupe records are kept.
    command_retention_s: int = Field(7 * 24 * 3600, validation_alias="COMMAND_RETENTION_S",
                                     ge=60)
    # A message a worker holds but has not acknowledged comes back after this long without
    # a lease renewal from its worker (live workers renew every visibility_timeout_s / 4).
    visibility_timeout_s: float = Field(30.0, validation_alias="BROKER_VISIBILITY_TIMEOUT_S",
                                        ge=1.0, le=86400.0)
    # Deliveries of one message to workers that died holding it before it is dead-lettered.
    max_redeliveries: int = Field(5, validation_alias="MAX_REDELIVERIES", ge=0, le=1000)
    # Retries (with backoff) of a command while the store is unreachable.
    max_retries: int = Field(8, validation_alias="COMMAND_MAX_RETRIES", ge=0, le=1000)
    log_level: LogLevel = Field("INFO", validation_alias="LOG_LEVEL")
    # The worker host's Prometheus endpoint (every pool process's counts); 0 turns it off.
    worker_metrics_port: int = Field(9808, validation_alias="WORKER_METRICS_PORT",
                                     ge=0, le=65535)
    worker_metrics_host: str = Field("127.0.0.1", validation_alias="WORKER_METRICS_HOST",
                                     min_length=1)
    # The provider feed's approximate length bound (Redis Stream MAXLEN ~).
    feed_maxlen: int = Field(100_000, validation_alias="FEED_MAXLEN", ge=1000, le=10_000_000)
    # The key the worker signs provider-feed events with and providers check them against
    # (shared.feed): the value itself, or a file holding it (the file wins). Unset: events
    # go unsigned, and providers that check (the AWS provider) act on none.
    feed_signing_key: str | None = Field(None, validation_alias="FEED_SIGNING_KEY",
                                         repr=False)
    feed_signing_key_file: Path | None = Field(None, validation_alias="FEED_SIGNING_KEY_FILE")
    # HostFactory deadlines: an acquire / a return request not done this long after it was
    # accepted ends complete_with_error (applied once by a worker).
    request_timeout_s: float = Field(DEFAULT_DEADLINE_S, validation_alias="REQUEST_TIMEOUT_S",
                                     ge=1.0, le=7 * 24 * 3600.0)
    return_timeout_s: float = Field(DEFAULT_DEADLINE_S, validation_alias="RETURN_TIMEOUT_S",
                                    ge=1.0, le=7 * 24 * 3600.0)

    @model_validator(mode="before")
    @classmethod
    def _fallbacks(cls, data: Any) -> Any:
        """Unset or empty variables take their defaults; the split URLs follow REDIS_URL."""
        if not isinstance(data, dict):
            return data
        data = {k: v for k, v in data.items() if v is not None and v != ""}
        redis_url = data.setdefault("REDIS_URL", DEFAULT_REDIS_URL)
        data.setdefault("BROKER_URL", redis_url)
        cache_url = data.setdefault("CACHE_URL", redis_url)
        data.setdefault("CACHE_READ_URL", cache_url)
        data.setdefault("QUERY_URL", "http://{}:{}".format(data.get("QUERY_HOST", "127.0.0.1"),
                                                            data.get("QUERY_PORT", 8080)))
        return data

    @field_validator("query_api_tokens", "gateway_api_tokens", mode="before")
    @classmethod
    def _split_tokens(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(t.strip() for t in value.split(",") if t.strip())
        return value

    @field_validator("broker_url")
    @classmethod
    def _known_broker(cls, value: str) -> str:
        from shared import brokers

        brokers.check(value)
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    def feed_key(self) -> bytes | None:
        """The feed signing key, read (and checked) now; raises SettingsError."""
        from shared import feed

        try:
            return feed.load_key(self.feed_signing_key, self.feed_signing_key_file)
        except (OSError, ValueError) as exc:
            name = "FEED_SIGNING_KEY_FILE" if self.feed_signing_key_file else "FEED_SIGNING_KEY"
            raise SettingsError(f"{name}: {exc}") from None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Settings from ``env`` (default: the process environment)."""
        source = os.environ if env is None else env
        names = {f.validation_alias for f in cls.model_fields.values()}
        try:
            return cls.model_validate({k: v for k, v in source.items() if k in names})
        except ValidationError as exc:
            raise SettingsError(_explain(exc)) from None


def _explain(exc: ValidationError) -> str:
    problems = []
    for err in exc.errors(include_url=False):
        name = ".".join(str(p) for p in err["loc"]) or "settings"
        shown = err.get("input")
        if isinstance(shown, str) and "://" in shown:  # a URL's password stays out of logs
            shown = re.sub(r"(://[^:/@;]*):[^@/;]*@", r"\1:***@", shown)
        problems.append(f"{name}: {err['msg']} (got {shown!r})")
    return "; ".join(problems)
