"""One contract, run on the in-memory fake, SQLite and PostgreSQL: what the executor and the
maintenance need from the store. A fake that drifts from the real stores fails here."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from commands_worker.adapters.sql.store import Store as SqlStore
from commands_worker.adapters.templates_file import EXAMPLE_TEMPLATES, load_templates_file
from commands_worker.service_layer.executor import Batch, Envelope, Execution, Executor
from commands_worker.service_layer.ports import REPLAYING, Store
from tests.fakes import FakeStore

CREATE = "commands.create_request"
UPDATE = "commands.update_machine_status"


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "memory":
        fake = FakeStore()
        fake.load_templates(load_templates_file(EXAMPLE_TEMPLATES).templates)
        yield fake
        return
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'contract.sqlite3'}"
    else:
        url = request.getfixturevalue("postgres_url")
    sql = SqlStore.from_url(url)
    sql.load_templates(load_templates_file(EXAMPLE_TEMPLATES).templates)
    yield sql
    sql.engine.dispose()


@pytest.fixture
def executor(store: Store) -> Executor:
    return Executor(store.unit_of_work, retention_s=3600)


def run(executor: Executor, task: str, task_id: str, **kwargs: object) -> str:
    return executor.execute(Envelope(task, task_id, dict(kwargs))).record.outcome


def test_lifecycle_and_versions(store: Store, executor: Executor) -> None:
    assert not store.has_requests()
    assert run(executor, CREATE, "c1", template_id="x86-small", max_number=2) == "applied"
    assert store.has_requests()
    run(executor, UPDATE, "u1", machine_id="m1", status="running", request_id="req-c1")
    run(executor, UPDATE, "u2", machine_id="m2", status="failed", request_id="req-c1")
    [(request, machines)] = list(store.iter_requests())
    assert (request.status, request.version) == ("complete_with_error", 3)
    assert {m.machine_id: (m.view_result, m.version) for m in machines} == {
        "m1": ("succeed", 1), "m2": ("fail", 1)}


def test_duplicate_is_recognised_after_commit(store: Store, executor: Executor) -> None:
    run(executor, CREATE, "c1", template_id="x86-small", max_number=2)
    again = executor.execute(Envelope(CREATE, "c1", {"template_id": "x86-small",
                                                     "max_number": 2}))
    # A duplicate changes no state; only the request's history tells it came again.
    assert again.duplicate and [d.status for d in again.docs] == ["history"]
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


def test_projected_rows_are_settled_by_the_next_transaction(store: Store,
                                                            executor: Executor) -> None:
    first = executor.execute(Envelope(CREATE, "c1", {"template_id": "x86-small",
                                                     "max_number": 1}))
    store.projected.add(d.outbox_id for d in first.docs)
    second = executor.execute(Envelope(CREATE, "c2", {"template_id": "x86-small",
                                                      "max_number": 1}))
    left = {row for row, _ in store.pending_docs(older_than_s=-1)}
    assert left == {d.outbox_id for d in second.docs}
    assert store.counts()["outbox"] == len(second.docs)  # the backlog: unsettled rows only


def test_settled_rows_are_kept_to_heal_from_then_purged(store: Store,
                                                       executor: Executor) -> None:
    """What was projected since a time (and what is not settled yet) is what a cache that
    lost its writes since then is given again; rows settled long ago are purged."""
    first = executor.execute(Envelope(CREATE, "c1", {"template_id": "x86-small",
                                                     "max_number": 1}))
    store.mark_projected([d.outbox_id for d in first.docs])
    settled_at = store.last_projected_at()
    assert settled_at is not None and abs(settled_at - time.time()) < 5
    second = executor.execute(Envelope(CREATE, "c2", {"template_id": "x86-small",
                                                      "max_number": 1}))
    everything = [d.outbox_id for d in first.docs + second.docs]
    assert [row for row, _ in store.projected_since(settled_at - 1)] == everything
    # After a row, a page at a time, the documents as they were written.
    after = first.docs[0].outbox_id
    page = store.projected_since(settled_at - 1, after_id=after, limit=2)
    assert [row for row, _ in page] == everything[1:3]
    assert {doc.key: doc.body for _, doc in store.projected_since(settled_at - 1)} == {
        d.key: d.body for d in first.docs + second.docs}
    # Settled after the time asked for: not given; not settled yet: always given.
    assert [row for row, _ in store.projected_since(settled_at + 60)] == [
        d.outbox_id for d in second.docs]
    assert store.purge_projected(settled_at + 1) == len(first.docs)
    assert [row for row, _ in store.projected_since(0)] == [d.outbox_id for d in second.docs]
    assert store.purge_projected(settled_at + 1) == 0  # unsettled rows are never purged


def test_concurrent_reports_never_lose_a_version(store: Store, executor: Executor) -> None:
    """Racing writers on one request: each machine report is applied once, in order."""
    run(executor, CREATE, "c1", template_id="x86-large", max_number=40)

    def report(worker: int) -> None:
        for n in range(10):
            run(executor, UPDATE, f"u{worker}-{n}", machine_id=f"m{worker}-{n}",
                status="pending", request_id="req-c1")

    assert _race(report, 4) == []
    [(request, machines)] = list(store.iter_requests())
    assert len(machines) == 40
    assert request.version == 41  # created (1) + one per machine, none lost to a race


def _race(work: Callable[[int], None], workers: int) -> list[BaseException]:
    """``work(n)`` on ``workers`` threads at once; what they raised."""
    errors: list[BaseException] = []

    def guarded(worker: int) -> None:
        try:
            work(worker)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(w,)) for w in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def test_templates_version_grows_only_when_the_list_changes(store: Store) -> None:
    loaded = load_templates_file(EXAMPLE_TEMPLATES).templates
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


RETURN = "commands.return_machines"


def _up(executor: Executor, request_id: str, *machines: tuple[str, str, str]) -> None:
    for machine_id, status, name in machines:
        run(executor, UPDATE, f"u-{machine_id}-{status}", machine_id=machine_id, status=status,
            request_id=request_id, metadata={"name": name, "private_ip": "10.0.0.1"})


def test_return_finds_machines_by_id_then_by_name(store: Store, executor: Executor) -> None:
    run(executor, CREATE, "c1", template_id="x86-small", max_number=3)
    _up(executor, "req-c1", ("m1", "running", "h1"), ("m2", "running", "h2"),
        ("m3", "running", "h3"))
    assert run(executor, RETURN, "r1", machines=[
        {"name": "h1", "machine_id": "m1"}, {"name": "h2"}, {"name": "ghost"}]) == "applied"
    views = {r.request_id: (r, ms) for r, ms in store.iter_requests()}
    ret, returned = views["ret-r1"]
    assert (ret.kind, ret.status, ret.max_number) == ("return", "in_progress", 3)
    assert sorted(m.machine_id for m in returned) == ["m1", "m2"]
    assert [u["name"] for u in ret.unknown_machines] == ["ghost"]
    # The acquire request still lists all three; its view changed (a new version).
    acquire, owned = views["req-c1"]
    assert len(owned) == 3 and acquire.version == 5
    # The same machine cannot be in two open return requests.
    run(executor, RETURN, "r2", machines=[{"name": "h1"}, {"name": "h3"}])
    ret2, returned2 = {r.request_id: (r, ms) for r, ms in store.iter_requests()}["ret-r2"]
    assert [m.machine_id for m in returned2] == ["m3"]
    assert "already being returned by ret-r1" in ret2.unknown_machines[0]["message"]
    # Terminated: the return request completes.
    for machine_id in ("m1", "m2"):
        run(executor, UPDATE, f"t-{machine_id}", machine_id=machine_id, status="terminated")
    ret, _ = {r.request_id: (r, ms) for r, ms in store.iter_requests()}["ret-r1"]
    assert ret.status == "complete"


def test_deadline_ends_a_request_once(store: Store) -> None:
    from commands_worker.service_layer.maintenance import pass_deadlines

    clock = [1_000_000.0]
    executor = Executor(store.unit_of_work, retention_s=3600, clock=lambda: clock[0],
                        deadlines=(60.0, 60.0))
    run(executor, CREATE, "c1", template_id="x86-small", max_number=3)
    _up(executor, "req-c1", ("m1", "running", "h1"), ("m2", "pending", "h2"))
    assert store.overdue_requests(clock[0] + 59) == []
    clock[0] += 61
    assert store.overdue_requests(clock[0]) == ["req-c1"]

    class Sink:
        def project(self, docs: object) -> int:
            return 0

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("time.time", lambda: clock[0])
        done = pass_deadlines(store, executor, Sink())
        assert [d.record.outcome for d in done] == ["applied"]
        assert pass_deadlines(store, executor, Sink()) == []  # nothing overdue any more
    again = executor.execute(Envelope("deadline", "deadline#req-c1",
                                      {"request_id": "req-c1"}, internal=True))
    assert again.duplicate  # a second worker's try changes nothing
    [(request, machines)] = list(store.iter_requests())
    assert (request.status, request.expired) == ("complete_with_error", True)
    assert {m.machine_id: (m.late, m.view_result) for m in machines} == {
        "m1": (False, "succeed"), "m2": (True, "fail")}
    # A machine first reported after the deadline is recorded, as launched too late.
    _up(executor, "req-c1", ("m3", "running", "h3"))
    [(request, machines)] = list(store.iter_requests())
    assert {m.machine_id: m.late for m in machines}["m3"] is True


def test_the_deadline_task_is_refused_off_the_wire(store: Store, executor: Executor) -> None:
    run(executor, CREATE, "c1", template_id="x86-small", max_number=1)
    assert run(executor, "deadline", "deadline-x", request_id="req-c1") == "rejected"
    [(request, _)] = list(store.iter_requests())
    assert request.status == "pending"


Command = tuple[str, str, dict[str, Any]]


def _outcomes(batch: Batch) -> list[str]:
    return [o.record.outcome if isinstance(o, Execution) else "retry later"
            for o in batch.outcomes]


def _batch(executor: Executor, *commands: Command) -> list[str]:
    return _outcomes(_run_batch(executor, *commands))


def _run_batch(executor: Executor, *commands: Command) -> Batch:
    return executor.execute_batch([Envelope(task, task_id, kwargs)
                                   for task, task_id, kwargs in commands])


def test_one_batch_sees_its_own_writes_and_a_refusal_leaves_none(
        store: Store, executor: Executor) -> None:
    """Writes of a batch reach the store together at its commit: later commands of the same
    batch still see earlier ones (a machine found by its new host name, a request id taken),
    and a refused command leaves nothing behind."""
    name = {"metadata": {"name": "host-a.example", "private_ip": "10.0.0.1"}}
    batch = _run_batch(
        executor,
        (CREATE, "c1", {"template_id": "x86-small", "max_number": 2}),
        (UPDATE, "u1", {"machine_id": "m1", "status": "running", "request_id": "req-c1",
                        **name}),
        (UPDATE, "u2", {"machine_id": "m2", "status": "pending", "request_id": "req-c1"}),
        (UPDATE, "u3", {"machine_id": "m3", "status": "pending", "request_id": "req-c1"}),
        (CREATE, "c2", {"template_id": "x86-small", "max_number": 1, "request_id": "req-c1"}),
        ("commands.return_machines", "r1", {"machines": [{"name": "host-a.example"}]}),
        (CREATE, "c3", {"template_id": "x86-small", "max_number": 1}),
    )
    assert _outcomes(batch) == [
        "applied", "applied", "applied", "rejected", "rejected", "applied", "applied"]
    requests = {r.request_id: (r, ms) for r, ms in store.iter_requests()}
    assert set(requests) == {"req-c1", "ret-r1", "req-c3"}
    first, machines = requests["req-c1"]
    # created, two machines, then m1 linked to the return request: version 4
    assert (first.version, sorted(m.machine_id for m in machines)) == (4, ["m1", "m2"])
    assert [m.machine_id for m in requests["ret-r1"][1]] == ["m1"]  # found by its new name
    # Creates apply first in a batch; the store's sequence follows the order applied.
    assert first.seq < requests["req-c3"][0].seq < requests["ret-r1"][0].seq
    # Every request view of the batch carries its request's sequence (the listing's score).
    scored = {(d.key, d.seq) for d in batch.docs if d.key.startswith("hf:v1:request:")}
    assert scored == {(f"hf:v1:request:{rid}", r.seq) for rid, (r, _) in requests.items()}


def test_racing_batches_on_one_request_lose_no_version(store: Store,
                                                       executor: Executor) -> None:
    run(executor, CREATE, "c1", template_id="x86-large", max_number=40)

    def report(worker: int) -> None:
        for first in range(0, 10, 5):
            _batch(executor, *((UPDATE, f"u{worker}-{n}", {
                "machine_id": f"m{worker}-{n}", "status": "pending",
                "request_id": "req-c1"}) for n in range(first, first + 5)))

    assert _race(report, 4) == []
    [(request, machines)] = list(store.iter_requests())
    assert (len(machines), request.version) == (40, 41)


def test_a_return_completes_when_its_machines_end_in_one_batch(store: Store,
                                                               executor: Executor) -> None:
    """The last reports of a return request's machines in one batch: each sees the others'
    new states (held, not yet in the store), so the request completes."""
    run(executor, CREATE, "c1", template_id="x86-small", max_number=3)
    _batch(executor, *((UPDATE, f"u{n}", {"machine_id": f"m{n}", "status": "running",
                                          "request_id": "req-c1"}) for n in range(3)))
    run(executor, "commands.return_machines", "r1",
        machines=[{"name": f"h{n}", "machine_id": f"m{n}"} for n in range(3)])
    for status in ("shutting-down", "terminated"):
        assert _batch(executor, *((UPDATE, f"{status}{n}", {
            "machine_id": f"m{n}", "status": status}) for n in range(3))) == ["applied"] * 3
    requests = {r.request_id: r for r, _ in store.iter_requests()}
    assert (requests["ret-r1"].status, requests["ret-r1"].version) == ("complete", 7)
