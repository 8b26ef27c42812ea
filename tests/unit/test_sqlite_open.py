"""Opening the SQLite store while another connection writes: a new connection's switch to
write-ahead logging is answered "database is locked" at once by SQLite (its busy timeout
does not apply to that upgrade). A worker's processes opening a new store together hit it,
and the worker died at its start ("Unrecoverable error: StoreUnavailable('database is
locked')"). The store now waits for the writer, as it does for any other lock."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

from commands_worker.adapters.sql.store import Store


def test_a_store_opened_while_another_connection_writes_waits_for_it(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    writer = sqlite3.connect(path, isolation_level=None)  # rollback journal: a file not yet WAL
    writer.execute("CREATE TABLE other (x)")
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("INSERT INTO other VALUES (1)")
    opened: list[object] = []

    def open_store() -> None:
        try:
            opened.append(Store.from_url(f"sqlite:///{path}").has_requests())
        except Exception as exc:  # what the worker died of
            opened.append(exc)

    opening = threading.Thread(target=open_store)
    started = time.monotonic()
    opening.start()
    time.sleep(0.3)  # the writer holds its transaction this long
    writer.execute("COMMIT")
    opening.join(10)
    assert opened == [False], opened
    assert time.monotonic() - started >= 0.3
    check = sqlite3.connect(path)
    assert check.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert check.execute("SELECT x FROM other").fetchall() == [(1,)]  # the writer's row kept
