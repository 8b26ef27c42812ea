"""The one place that builds the worker's dependencies, lazily and once per process.

Nothing connects at import time; a forked pool process drops what it inherited and builds
its own on first use.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import orjson
import redis

from commands_worker.adapters.broker.queues import QueueReadings, readings_for
from commands_worker.adapters.projector import Projector
from commands_worker.adapters.sql.store import Store
from commands_worker.adapters.templates_file import (
    EXAMPLE_TEMPLATES,
    Loaded,
    TemplatesFileError,
    load_templates_file,
)
from commands_worker.domain.errors import StoreUnavailable
from commands_worker.service_layer import documents
from commands_worker.service_layer.executor import Executor
from shared import brokers, keys
from shared.redis_urls import sync_client
from shared.settings import Settings

log = logging.getLogger("hostfactory.worker")


@dataclass
class Deps:
    settings: Settings
    store: Store
    cache: redis.Redis
    # The Redis holding the dead-letter inbox: the broker itself when it is Redis, the read
    # cache when the broker is RabbitMQ.
    inbox: redis.Redis
    queues: QueueReadings
    projector: Projector
    executor: Executor


_deps: Deps | None = None
_lock = threading.Lock()
STORE_WAIT_S = 1.0
STORE_WAIT_SAY_S = 5.0


def build(settings: Settings | None = None) -> Deps:
    settings = settings or Settings.from_env()
    store = Store.from_url(settings.store_url)
    cache: redis.Redis = sync_client(settings.cache_url, socket_timeout=5,
                                     socket_connect_timeout=5, health_check_interval=30)
    inbox: redis.Redis = (cache if settings.broker_url == settings.cache_url
                          or brokers.is_amqp(settings.broker_url) else
                          sync_client(settings.broker_url, socket_timeout=5,
                                      socket_connect_timeout=5))
    return Deps(settings, store, cache, inbox, readings_for(settings.broker_url, inbox),
                Projector(cache, settings.feed_maxlen, settings.feed_key()),
                Executor(store.unit_of_work, settings.command_retention_s,
                         deadlines=(settings.request_timeout_s, settings.return_timeout_s)))


def deps() -> Deps:
    global _deps
    if _deps is None:
        with _lock:
            if _deps is None:
                _deps = build()
    return _deps


def deps_when_the_store_answers(between: Callable[[], None]) -> Deps:
    """``deps()``, waiting while the store does not answer (a worker started before its
    database, or during a failover), and saying so every few seconds: the worker takes no
    command meanwhile. ``between`` runs after each try (it raises to stop the wait: a
    shutdown asked for). Anything else that stops the build still fails the start."""
    said = 0.0
    while True:
        try:
            return deps()
        except StoreUnavailable as exc:
            if time.monotonic() - said >= STORE_WAIT_SAY_S:
                said = time.monotonic()
                log.warning("the store does not answer; the worker waits for it before it "
                            "takes commands", extra={"event": "store_waiting",
                                                     "error": str(exc)[:300]})
        for _ in range(int(STORE_WAIT_S / 0.1)):  # a stop asked for is heard within 0.1 s
            between()
            time.sleep(0.1)


def warm(d: Deps) -> None:
    """Connect to the store and the read cache, and load the projector's scripts."""
    d.store.has_requests()
    d.projector.load_scripts()


def _forget_after_fork() -> None:
    global _deps, _lock
    if _deps is not None:
        _deps.store.engine.dispose(close=False)
    _deps = None
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_after_fork)


def templates_stamp(d: Deps) -> tuple[int, int, int] | None:
    """What changes when the templates file does (None: it cannot be read)."""
    try:
        stat = os.stat(d.settings.templates_file or EXAMPLE_TEMPLATES)
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size, stat.st_ino


def project_stored_templates(d: Deps) -> int:
    """Project the templates the store holds (loaded by an earlier start); returns how many."""
    templates, version = d.store.templates()
    if templates:
        d.projector.project([documents.templates_doc(templates, version)])
    return len(templates)


def load_and_project_templates(d: Deps) -> int:
    """Load the templates file into the store and project the list; returns its size. A
    template with a problem is left out alone, named in the log and in the status document
    (readiness, metrics); ``TemplatesFileError`` when none is usable."""
    path = d.settings.templates_file or EXAMPLE_TEMPLATES
    try:
        loaded = load_templates_file(path)
    except TemplatesFileError as exc:
        write_templates_status(d, str(path), loaded=None, file_problems=exc.problems)
        raise
    for refused in loaded.refused:
        log.error("template refused; the others are served", extra={
            "event": "template_refused", "template_id": refused.template_id,
            "where": refused.where, "problems": list(refused.problems)})
    templates, version = d.store.load_templates(loaded.templates)
    d.projector.project([documents.templates_doc(templates, version)])
    write_templates_status(d, str(path), loaded)
    log.info("templates loaded", extra={"event": "templates_loaded", "count": len(templates),
                                        "refused": len(loaded.refused),
                                        "templates_version": version})
    return len(templates)


def write_templates_status(d: Deps, source: str, loaded: Loaded | None,
                           file_problems: list[str] | None = None) -> None:
    """What the last load made of the file, for readiness and the refused-templates metric
    (best effort: the cache being down must not stop a load)."""
    status = {"at": time.time(), "source": source,
              "loaded": len(loaded.templates) if loaded else None,
              "refused": [{"where": r.where, "template_id": r.template_id,
                           "problems": list(r.problems)} for r in (loaded.refused if loaded
                                                                     else [])],
              "file_problems": file_problems or []}
    with contextlib.suppress(redis.RedisError):
        d.cache.set(keys.TEMPLATES_STATUS_KEY, orjson.dumps(status))
