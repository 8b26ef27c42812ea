"""The worker's housekeeping, a step of its main process: at start the schema and templates,
then every second the outbox repair, the requests past their deadline and the dead-letter
inbox, every five seconds the provider feed's trim (never past what a provider has not
acknowledged) and the purge of settled outbox rows too old to heal from, and hourly the
retention purge. A failure is logged and tried again a second
later; it never stops the worker. Beside it, on a thread of its own, the read cache's mark
(healing a cache that lost writes)."""

from __future__ import annotations

import os
import threading
import time
from functools import partial
from typing import Any

from celery import bootsteps
from celery.worker import state as worker_state

from commands_worker import bootstrap
from commands_worker.adapters import metrics
from commands_worker.adapters.broker import dead_letter_inbox
from commands_worker.adapters.cache_mark import CacheMark, Loss
from commands_worker.adapters.templates_file import TemplatesFileError
from commands_worker.service_layer import maintenance
from shared import keys, names

PURGE_EVERY_S = 3600.0
HEAL_LOCK_S = 600
TRIM_FEED_EVERY_S = 5.0
_served: list[int] = []


def serve_metrics() -> None:
    """The host's metrics endpoint, once per worker main process (the consumer, and so this
    step, may restart after a broker outage)."""
    settings = bootstrap.deps().settings
    if _served or not settings.worker_metrics_port:
        return
    try:
        metrics.serve(settings.worker_metrics_port, settings.worker_metrics_host,
                      bootstrap.deps, names.ALL_QUEUES)
        _served.append(settings.worker_metrics_port)
    except (OSError, ValueError) as exc:  # the port is taken (a second worker on this
        # host), or the worker was not started as commands_worker.app: say so
        bootstrap.log.error("metrics endpoint not served", extra={
            "event": "metrics_unserved", "port": settings.worker_metrics_port,
            "error": str(exc)})
        _served.append(0)


_watching: list[threading.Thread] = []


def watch_cache() -> None:
    """The read cache's mark, every second on a thread of its own (a busy worker's timer must
    not let a failover pass unnoticed), once per worker main process."""
    if not _watching:
        _watching.append(threading.Thread(target=_watch_cache, name="cache-watch",
                                          daemon=True))
        _watching[0].start()


def _watch_cache() -> None:
    mark: CacheMark | None = None
    healing: threading.Thread | None = None
    while True:
        try:
            d = bootstrap.deps()
            mark = mark or CacheMark(d.cache)
            first = mark.highest_seen is None
            loss = mark.check(time.time(), first and d.store.has_requests(),
                              d.store.last_projected_at() if first else None)
            if loss and (healing is None or not healing.is_alive()):
                healing = threading.Thread(target=heal_cache, args=(d, loss),
                                           name="cache-heal", daemon=True)
                healing.start()
        except Exception as exc:  # the cache away (a failover under way): next second
            bootstrap.log.debug("cache mark not checked", extra={"error": repr(exc)[:300]})
        time.sleep(1.0)


def heal_cache(d: bootstrap.Deps, loss: Loss) -> None:
    """Re-project what the read cache lost, once among all workers (a lock in the cache
    itself: the first to notice heals): what was projected since the time it still holds,
    from the kept outbox, or everything when that is unknown or too long ago."""
    if not d.cache.set(keys.CACHE_HEAL_LOCK_KEY, os.getpid(), nx=True, ex=HEAL_LOCK_S):
        return
    bootstrap.log.warning("read cache lost writes; re-projecting them from the store", extra={
        "event": "cache_healing", "reason": loss.reason, "holds_until": loss.holds_until})
    try:
        done = maintenance.heal_cache(d.store, d.projector, d.settings.command_retention_s,
                                      loss.holds_until)
        metrics.CACHE_HEALS.labels(done["healed"]).inc()
        bootstrap.log.warning("read cache healed", extra={"event": "cache_healed", **done})
    except Exception:
        bootstrap.log.exception("healing the read cache failed; tried again when noticed",
                                extra={"event": "cache_heal_failed"})
    finally:
        d.cache.delete(keys.CACHE_HEAL_LOCK_KEY)


class Housekeeping(bootsteps.StartStopStep):  # type: ignore[misc]
    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.tref: Any = None
        self.ready = False
        self.last_purge = 0.0
        self.last_trim = 0.0

        self.templates_stamp: tuple[int, int, int] | None = None

    def start(self, parent: Any) -> None:
        # Before the consumer's loop runs: no command is taken while the store is away (a
        # warm or cold shutdown asked for meanwhile is Celery's to carry out).
        bootstrap.deps_when_the_store_answers(worker_state.maybe_shutdown)
        self.tref = parent.timer.call_repeatedly(1.0, self.tick, priority=10)
        serve_metrics()
        watch_cache()
        self.tick()

    def stop(self, parent: Any) -> None:
        if self.tref is not None:
            self.tref.cancel()
            self.tref = None

    def tick(self) -> None:
        try:
            d = bootstrap.deps()
            self.follow_templates(d)
            maintenance.repair_outbox(d.store, d.projector)
            self.pass_deadlines(d)
            dead_letter_inbox.drain(d.inbox, partial(maintenance.file_dead_letter,
                                                      d.executor, d.projector))
            if time.monotonic() - self.last_trim > TRIM_FEED_EVERY_S:
                d.projector.trim_feed()
                maintenance.purge_projected(d.store)
                self.last_trim = time.monotonic()
            if time.monotonic() - self.last_purge > PURGE_EVERY_S:
                maintenance.purge_expired_commands(d.store, d.settings.command_retention_s)
                self.last_purge = time.monotonic()
        except Exception:
            bootstrap.log.exception("housekeeping failed; retrying in a second",
                                    extra={"event": "housekeeping_failed"})

    @staticmethod
    def pass_deadlines(d: bootstrap.Deps) -> None:
        for done in maintenance.pass_deadlines(d.store, d.executor, d.projector):
            record = done.record
            if record.outcome == "applied":
                metrics.DEADLINES.inc()
            bootstrap.log.info("deadline passed" if record.outcome == "applied" else
                               "deadline no longer applies", extra={
                                   "event": "deadline_passed", "outcome": record.outcome,
                                   "request_id": record.request_id,
                                   "command_id": record.command_id})

    def follow_templates(self, d: bootstrap.Deps) -> None:
        """Load the templates at start, and again whenever the file changes. A template with
        a problem is left out alone; a file with no usable template leaves the templates
        loaded before in place (also across a restart: the store has them), and says why in
        the log and the status document (the query service's readiness)."""
        stamp = bootstrap.templates_stamp(d)
        if self.ready and stamp == self.templates_stamp:
            return
        self.templates_stamp = stamp
        try:
            bootstrap.load_and_project_templates(d)
        except TemplatesFileError as exc:
            kept = bootstrap.project_stored_templates(d)
            bootstrap.log.error("templates file cannot be used; the templates loaded before "
                                "stay", extra={"event": "templates_refused",
                                               "problems": exc.problems, "kept": kept})
        self.ready = True
