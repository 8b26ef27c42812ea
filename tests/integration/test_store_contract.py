"""One contract, run on the in-memory fake, SQLite and PostgreSQL: what the executor and the
maintenance need from the store. A fake that drifts from the real stores fails here."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from commands_worker.adapters.sql.store import Store as SqlStore
from commands_worker.adapters.templates_file import EXAMPLE_TEMPLATES, load_templates_file
from commands_worker.service_layer.executor import Envelope, Executor
from commands_worker.service_layer.ports import REPLAYING, Store
from tests.fakes import FakeStore

CREATE = "commands.create_request"
UPDATE = "commands.update_machine_status"


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "memory":
        fake = FakeStore()
        fake.load_templates(load_templates_file(EXAMPLE_TEMPLATES))
        yield fake
        return
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'contract.sqlite3'}"
    else:
        url = request.getfixturevalue("postgres_url")
    sql = SqlStore.from_url(url)
    sql.load_templates(load_templates_file(EXAMPLE_TEMPLATES))
    yield sql
    sql.engine.dispose()


@pytest.fixture
def executor(store: Store) -> Executor:
    return Executor(store.unit_of_work, retention_s=3600)


def run(executor: Executor, task: str, task_id: str, **kwargs: object) -> str:
    return executor.execute(Envelope(task, task_id, dict(kwargs))).record.outcome


def test_lifecycle_and_versions(store: Store, executor: Executor) -> None:
    assert run(executor, CREATE, "c1", template_id="x86-small", max_number=2) == "applied"
    run(executor, UPDATE, "u1", machine_id="m1", status="running", request_id="req-c1")
    run(executor, UPDATE, "u2", machine_id="m2", status="failed", request_id="req-c1")
    [(request, machines)] = list(store.iter_requests())
    assert (request.status, request.version) == ("complete_with_error", 3)
    assert {m.machine_id: (m.result, m.version) for m in machines} == {
        "m1": ("succeed", 1), "m2": ("fail", 1)}


def test_duplicate_is_recognised_after_commit(store: Store, executor: Executor) -> None:
    run(executor, CREATE, "c1", template_id="x86-small", max_number=2)
    again = executor.execute(Envelope(CREATE, "c1", {"template_id": "x86-small",
                                                     "max_number": 2}))
    assert again.duplicate and again.docs == []
    assert store.counts()["requests"] == 1


def test_refusal_is_kept_and_replay_reopens_the_command(store: Store,
                                                        executor: Executor) -> None:
    assert run(executor, CREATE, "c1", template_id="gpu", max_number=1) == "rejected"
    [letter] = store.dead_letters()
    assert letter.command_id == "c1" and "template_not_found" in letter.reason
    assert letter.raw["kwargs"] == {"template_id": "gpu", "max_number": 1}
    replayed = store.begin_replay(letter.id or 0)
    assert replayed is not None and store.dead_letters() == []
    # After replay the command runs again; it is refused again and dead-lettered again.
    assert run(executor, CREATE, "c1", template_id="gpu", max_number=1) == "rejected"
    [again] = store.dead_letters()
    assert again.id == letter.id and again.attempts == 2


def test_outbox_keeps_unprojected_documents(store: Store, executor: Executor) -> None:
    execution = executor.execute(Envelope(CREATE, "c1", {"template_id": "x86-small",
                                                         "max_number": 1}))
    pending = store.pending_docs(older_than_s=-1)
    assert {doc.key for _, doc in pending} == {doc.key for doc in execution.docs}
    store.mark_projected([row for row, _ in pending])
    assert store.pending_docs(older_than_s=-1) == []


def test_projected_rows_are_deleted_by_the_next_transaction(store: Store,
                                                            executor: Executor) -> None:
    first = executor.execute(Envelope(CREATE, "c1", {"template_id": "x86-small",
                                                     "max_number": 1}))
    store.projected.add(d.outbox_id for d in first.docs)
    second = executor.execute(Envelope(CREATE, "c2", {"template_id": "x86-small",
                                                      "max_number": 1}))
    left = {row for row, _ in store.pending_docs(older_than_s=-1)}
    assert left == {d.outbox_id for d in second.docs}


def test_concurrent_reports_never_lose_a_version(store: Store, executor: Executor) -> None:
    """Racing writers on one request: each machine report is applied once, in order."""
    run(executor, CREATE, "c1", template_id="x86-large", max_number=40)
    errors: list[BaseException] = []

    def report(worker: int) -> None:
        try:
            for n in range(10):
                run(executor, UPDATE, f"u{worker}-{n}", machine_id=f"m{worker}-{n}",
                    status="pending", request_id="req-c1")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=report, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    [(request, machines)] = list(store.iter_requests())
    assert len(machines) == 40
    assert request.version == 41  # created (1) + one per machine, none lost to a race


def test_templates_version_grows_only_when_the_list_changes(store: Store) -> None:
    loaded = load_templates_file(EXAMPLE_TEMPLATES)
    _, version = store.templates()
    assert store.load_templates(loaded)[1] == version
    assert store.load_templates(loaded[:1])[1] == version + 1
    assert [t.template_id for t in store.templates()[0]] == [loaded[0].template_id]


def test_purge_keeps_recent_outcomes_and_replaying_ones(store: Store,
                                                        executor: Executor) -> None:
    run(executor, CREATE, "c1", template_id="gpu", max_number=1)
    run(executor, CREATE, "c2", template_id="x86-small", max_number=1)
    [letter] = store.dead_letters()
    store.begin_replay(letter.id or 0)
    assert store.purge_commands(older_than=0) == 0
    assert store.purge_commands(older_than=float("inf")) == 1
    assert [(c.command_id, c.outcome) for c in store.iter_commands(since=0)] == [
        ("c1", REPLAYING)]


def test_a_letter_without_command_id_is_never_merged(store: Store,
                                                     executor: Executor) -> None:
    from commands_worker.service_layer.ports import DeadLetter

    for n in range(2):
        executor.file_dead_letter(DeadLetter(reason=f"bad {n}", raw={"kind": "message"},
                                             first_at=1.0, last_at=1.0))
    assert [(d.reason, d.attempts) for d in store.dead_letters()] == [("bad 0", 1),
                                                                      ("bad 1", 1)]
    assert store.counts()["dead_letters"] == 2


def test_a_parked_message_with_a_usable_id_records_its_command_as_rejected(
        store: Store, executor: Executor) -> None:
    from commands_worker.service_layer.ports import DeadLetter

    parked = DeadLetter(reason="unknown task 'x.y'", raw={"kind": "message"}, first_at=1.0,
                        last_at=1.0, command_id="message:t9", task="x.y")
    docs = executor.file_dead_letter(parked)
    assert [d.key for d in docs] == ["hf:v1:command:t9"]
    assert [(c.command_id, c.outcome, c.reason) for c in store.iter_commands(since=0)] == [
        ("t9", "rejected", "unknown task 'x.y'")]
    assert executor.file_dead_letter(parked) == []  # filed again: one more attempt, no outcome
    [letter] = store.dead_letters()
    assert letter.attempts == 2
