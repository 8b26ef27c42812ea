"""A store written by the version before return requests and deadlines: the worker adds the
new columns on start, and what was stored reads and works as before."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from commands_worker.adapters.sql.store import Store
from commands_worker.adapters.sql.tables import metadata
from commands_worker.adapters.templates_file import EXAMPLE_TEMPLATES, load_templates_file
from commands_worker.service_layer.executor import Envelope, Executor

ADDED = {("requests", "kind"), ("requests", "deadline_at"), ("requests", "details"),
         ("machines", "name"), ("machines", "return_request_id"), ("machines", "late")}


def _old_schema(engine: sa.Engine) -> None:
    old = sa.MetaData()
    for table in metadata.sorted_tables:
        sa.Table(table.name, old, *(c._copy() for c in table.columns
                                    if (table.name, c.name) not in ADDED))
    old.create_all(engine)
    with engine.begin() as conn:
        conn.execute(sa.text(
            "INSERT INTO requests (request_id, template_id, max_number, attributes, status, "
            "version, created_at, updated_at) VALUES ('req-old', 'x86-small', 1, '{}', "
            "'pending', 1, 1.0, 1.0)"))


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_an_older_store_is_upgraded_on_start(kind: str, tmp_path: Path,
                                             request: pytest.FixtureRequest) -> None:
    url = (f"sqlite:///{tmp_path / 'old.sqlite3'}" if kind == "sqlite"
           else request.getfixturevalue("postgres_url"))
    engine = sa.create_engine(url)
    _old_schema(engine)
    engine.dispose()
    store = Store.from_url(url)
    Store.from_url(url).engine.dispose()  # a second start finds nothing to add
    store.load_templates(load_templates_file(EXAMPLE_TEMPLATES).templates)
    executor = Executor(store.unit_of_work, retention_s=60)
    run = executor.execute(Envelope("commands.update_machine_status", "u1", {
        "machine_id": "m1", "status": "running", "request_id": "req-old",
        "metadata": {"name": "h1"}}))
    assert run.record.outcome == "applied"
    assert executor.execute(Envelope("commands.return_machines", "r1", {
        "machines": [{"name": "h1"}]})).record.outcome == "applied"
    views = {r.request_id: (r, ms) for r, ms in store.iter_requests()}
    old, machines = views["req-old"]
    assert (old.kind, old.deadline_at, old.status) == ("acquire", None, "complete")
    assert [m.return_request_id for m in machines] == ["ret-r1"]
    assert store.overdue_requests(1e12) == ["ret-r1"]  # an old request has no deadline
    store.engine.dispose()


@pytest.mark.postgres
def test_workers_starting_together_on_an_empty_store_all_start(postgres_url: str) -> None:
    """A worker's pool processes, or several workers, start at once on an empty PostgreSQL
    store: each creates the schema or finds it made, none fails. (Under REPEATABLE READ the
    advisory lock's own statement took the snapshot before the wait: three of four failed
    with "relation already exists".)"""
    import subprocess
    import sys

    code = ("from commands_worker.adapters.sql.store import Store; "
            f"Store.from_url({postgres_url!r}); print('started')")
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE) for _ in range(5)]
    done = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0] * 5, [err[-300:] for _, err in done]
    assert all(out.strip() == b"started" for out, _ in done)
