"""Engines for the two stores, and what their errors mean. SQLite (WAL, ``BEGIN IMMEDIATE``)
is the default; PostgreSQL is the production store."""

from __future__ import annotations

import fcntl
import os
import sqlite3
import time
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from commands_worker.domain.errors import ConcurrentUpdate, StoreUnavailable

BUSY_TIMEOUT_S: Final = 30.0
_SQLITE_PRAGMAS = (
    # FULL: a command acknowledged to the broker survives a power cut, not only a crash.
    "PRAGMA synchronous=FULL",
    f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}",
    "PRAGMA foreign_keys=ON",
)


def create_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        return _sqlite_engine(url)
    # Every read of a command's transaction sees one snapshot, so a refusal (machine limit,
    # illegal transition) is never decided on a half-seen concurrent write; a write that
    # collides with a concurrent one fails with a serialization error and is run again.
    return sa.create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5,
                            isolation_level="REPEATABLE READ")


def _sqlite_engine(url: str) -> Engine:
    path = sa.engine.make_url(url).database
    if path and path != ":memory:":
        from pathlib import Path

        Path(path).parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_S})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # pysqlite's own transaction handling would defer the write lock; we take it up front.
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        _wal(cursor)
        for pragma in _SQLITE_PRAGMAS:
            cursor.execute(pragma)
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # Writers queue on the lock instead of failing on a read-to-write upgrade.
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def _wal(cursor: Any) -> None:
    """Write-ahead logging (kept by the file once set). Switching a file to it upgrades a read
    to a write, and SQLite answers "database is locked" at once, without its busy timeout,
    while another connection writes: a worker's processes opening a new store together
    crashed on it (a worker that never started). Retried here until the busy timeout."""
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


_RACE_SQLSTATES = frozenset({"40001", "40P01"})  # serialization failure, deadlock


# SQLite says these of a statement, not of the store: what a command holds, never an outage.
_DATA_DEPENDENT = ("too many SQL variables", "too many terms", "string or blob too big",
                   "too many columns", "Expression tree is too large")


def translate_errors(exc: DBAPIError) -> Exception:
    """A lost race is a concurrent update; a dead connection is an outage; a statement the
    data made too large is neither (the command is refused alone, not retried as if the
    store were down)."""
    sqlstate = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
    if isinstance(exc, IntegrityError) or sqlstate in _RACE_SQLSTATES:
        return ConcurrentUpdate(str(exc.orig))
    if any(text in str(exc.orig) for text in _DATA_DEPENDENT):
        return exc
    if isinstance(exc, OperationalError) or exc.connection_invalidated:
        return StoreUnavailable(str(exc.orig))
    return exc


class WriterLock:
    """SQLite lets one writer in at a time and makes the others poll with growing sleeps
    (a 2-process worker lost most of its time there). Writers of this store queue on a
    file lock instead: the kernel wakes the next one the moment the lock is free. A no-op
    for PostgreSQL, where writers run concurrently."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self._fd: int | None = None
        self._pid = 0

    def __enter__(self) -> None:
        if self.path is None:
            return
        if self._fd is None or self._pid != os.getpid():  # a forked child opens its own
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            self._pid = os.getpid()
        fcntl.flock(self._fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        if self.path is not None and self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)


def writer_lock_for(url: str) -> WriterLock:
    database = sa.engine.make_url(url).database
    if url.startswith("sqlite") and database and database != ":memory:":
        return WriterLock(f"{database}.writer-lock")
    return WriterLock(None)
