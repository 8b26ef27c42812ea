"""The executor and handlers over the in-memory unit of work."""

import itertools

import orjson
import pytest

from commands_worker.service_layer.executor import Envelope, Executor
from shared import keys
from tests.fakes import FakeState, FakeUnitOfWork, templates

CREATE = "commands.create_request"
UPDATE = "commands.update_machine_status"


@pytest.fixture
def state() -> FakeState:
    return FakeState.with_templates(templates(small=2, big=5))


@pytest.fixture
def executor(state: FakeState) -> Executor:
    clock = itertools.count(1000.0)
    return Executor(lambda: FakeUnitOfWork(state), retention_s=60,
                    clock=lambda: float(next(clock)))


def send(executor: Executor, task: str, task_id: str, **kwargs: object) -> str:
    return executor.execute(Envelope(task, task_id, dict(kwargs))).record.outcome


def test_create_request_defaults_request_id_to_command_id(executor: Executor,
                                                          state: FakeState) -> None:
    assert send(executor, CREATE, "t1", template_id="small", max_number=2) == "applied"
    request = state.requests["req-t1"]
    assert (request.status, request.version) == ("pending", 1)
    docs = {d.key: orjson.loads(d.body) for d in state.outbox}
    assert docs[keys.request_key("req-t1")]["status"] == "pending"
    assert docs[keys.command_key("t1")]["outcome"] == "applied"


def test_redelivered_command_changes_nothing(executor: Executor, state: FakeState) -> None:
    send(executor, CREATE, "t1", template_id="small", max_number=2)
    send(executor, UPDATE, "u1", machine_id="m1", status="pending", request_id="req-t1")
    again = executor.execute(Envelope(UPDATE, "u1", {"machine_id": "m1", "status": "pending",
                                                     "request_id": "req-t1"}))
    assert again.duplicate and again.record.outcome == "applied"
    assert state.machines["m1"].version == 1
    assert state.requests["req-t1"].version == 2


def test_full_lifecycle_reaches_complete(executor: Executor, state: FakeState) -> None:
    send(executor, CREATE, "t1", template_id="small", max_number=2)
    for n, (machine, status) in enumerate([("m1", "pending"), ("m2", "pending"),
                                           ("m1", "running"), ("m2", "running")]):
        assert send(executor, UPDATE, f"u{n}", machine_id=machine, status=status,
                    request_id="req-t1") == "applied"
    assert state.requests["req-t1"].status == "complete"
    assert state.requests["req-t1"].version == 5
    assert [state.machines[m].version for m in ("m1", "m2")] == [2, 2]


def test_failed_machine_gives_complete_with_error(executor: Executor, state: FakeState) -> None:
    send(executor, CREATE, "t1", template_id="small", max_number=2)
    send(executor, UPDATE, "u1", machine_id="m1", status="running", request_id="req-t1")
    send(executor, UPDATE, "u2", machine_id="m2", status="failed", request_id="req-t1")
    assert state.requests["req-t1"].status == "complete_with_error"


def test_stale_report_is_superseded_and_changes_nothing(executor: Executor,
                                                        state: FakeState) -> None:
    send(executor, CREATE, "t1", template_id="small", max_number=2)
    send(executor, UPDATE, "u1", machine_id="m1", status="running", request_id="req-t1",
         observed_at=1_767_225_600.0)
    assert send(executor, UPDATE, "u0", machine_id="m1", status="pending",
                observed_at=1_767_225_500.0) == "superseded"
    assert (state.machines["m1"].status, state.machines["m1"].version) == ("running", 1)


@pytest.mark.parametrize(("task", "kwargs", "reason"), [
    (CREATE, {"template_id": "nope", "max_number": 1}, "template_not_found"),
    (CREATE, {"template_id": "small", "max_number": 3}, "max_number_exceeded"),
    (CREATE, {"template_id": "small", "max_number": "1"}, "invalid_command: max_number"),
    (CREATE, {"template_id": "small", "max_number": 1, "x": 1}, "invalid_command: x"),
    (UPDATE, {"machine_id": "m9", "status": "running"}, "request_id is required"),
    (UPDATE, {"machine_id": "m9", "status": "running", "request_id": "req-zz"},
     "request_not_found"),
    ("commands.report_launch_failure", {"request_id": "r", "count": 0, "message": "x"},
     "invalid_command: count"),
    ("commands.report_launch_failure", {"request_id": "r", "count": "2", "message": "x"},
     "invalid_command: count"),
    ("commands.report_launch_failure", {"request_id": "r", "count": 1, "message": ""},
     "invalid_command: message"),
    ("commands.report_launch_failure", {"request_id": "r", "count": 1}, "invalid_command"),
])
def test_refusals_are_recorded_and_dead_lettered(executor: Executor, state: FakeState,
                                                 task: str, kwargs: dict[str, object],
                                                 reason: str) -> None:
    execution = executor.execute(Envelope(task, "bad-1", kwargs))
    assert execution.record.outcome == "rejected"
    assert execution.record.reason is not None and reason in execution.record.reason
    assert state.commands["bad-1"].outcome == "rejected"
    [letter] = state.dead_letters
    assert letter.raw["kwargs"] == kwargs and reason in letter.reason
    outcome_doc = orjson.loads(next(d.body for d in state.outbox
                                    if d.key == keys.command_key("bad-1")))
    assert outcome_doc["outcome"] == "rejected" and reason in outcome_doc["reason"]


def test_machine_beyond_max_number_is_refused(executor: Executor, state: FakeState) -> None:
    send(executor, CREATE, "t1", template_id="small", max_number=1)
    send(executor, UPDATE, "u1", machine_id="m1", status="pending", request_id="req-t1")
    assert send(executor, UPDATE, "u2", machine_id="m2", status="pending",
                request_id="req-t1") == "rejected"
    assert "m2" not in state.machines
    assert state.commands["u2"].reason is not None
    assert "machine_limit_reached" in state.commands["u2"].reason


def test_illegal_transition_is_refused_and_later_commands_apply(executor: Executor,
                                                                state: FakeState) -> None:
    send(executor, CREATE, "t1", template_id="small", max_number=2)
    send(executor, UPDATE, "u1", machine_id="m1", status="terminated", request_id="req-t1")
    assert send(executor, UPDATE, "u2", machine_id="m1", status="running") == "rejected"
    assert send(executor, UPDATE, "u3", machine_id="m2", status="running",
                request_id="req-t1") == "applied"
    assert state.machines["m1"].status == "terminated"


def test_refused_command_resent_keeps_first_outcome(executor: Executor,
                                                    state: FakeState) -> None:
    send(executor, CREATE, "t1", template_id="nope", max_number=1)
    state.templates["nope"] = templates(nope=1)[0]
    assert send(executor, CREATE, "t1", template_id="nope", max_number=1) == "rejected"
    assert len(state.dead_letters) == 1


def test_machine_racing_ahead_of_its_request_is_retried_not_refused(
        executor: Executor, state: FakeState) -> None:
    from commands_worker.domain.errors import RetryLater

    early = Envelope(UPDATE, "u1", {"machine_id": "m1", "status": "pending",
                                    "request_id": "req-t1"}, final_attempt=False)
    with pytest.raises(RetryLater):
        executor.execute(early)
    assert state.commands == {} and state.dead_letters == []
    send(executor, CREATE, "t1", template_id="small", max_number=2)
    assert executor.execute(early).record.outcome == "applied"


def test_a_launch_failure_for_an_unknown_request_is_refused_at_once(
        executor: Executor, state: FakeState) -> None:
    """Unlike a machine report, it does not wait: a provider learns of a request from the
    feed, which is written only after the request is committed."""
    early = Envelope("commands.report_launch_failure", "f1", {
        "request_id": "req-t1", "count": 1, "message": "no capacity"}, final_attempt=False)
    record = executor.execute(early).record
    assert record.outcome == "rejected"
    assert (record.reason or "").startswith("request_not_found")
    assert len(state.dead_letters) == 1


def test_a_batch_applies_in_order_in_one_transaction(executor: Executor,
                                                     state: FakeState) -> None:
    batch = executor.execute_batch([
        Envelope(CREATE, "t1", {"template_id": "small", "max_number": 2}),
        Envelope(UPDATE, "u1", {"machine_id": "m1", "status": "running", "request_id": "req-t1"}),
        Envelope(UPDATE, "u1", {"machine_id": "m1", "status": "running", "request_id": "req-t1"}),
        Envelope(CREATE, "bad", {"template_id": "nope", "max_number": 1}),
        Envelope(UPDATE, "u2", {"machine_id": "m2", "status": "running", "request_id": "req-t1"}),
    ])
    outcomes = [o.record.outcome for o in batch.outcomes if not isinstance(o, Exception)]
    assert outcomes == ["applied", "applied", "applied", "rejected", "applied"]
    assert [getattr(o, "duplicate", None) for o in batch.outcomes][2] is True
    assert state.requests["req-t1"].status == "complete"
    assert state.requests["req-t1"].version == 3
    assert state.machines["m1"].version == 1  # the in-batch duplicate changed nothing
    assert [letter.command_id for letter in state.dead_letters] == ["bad"]
    assert {d.key for d in batch.docs} >= {keys.request_key("req-t1"), keys.command_key("bad")}


def test_a_refusal_in_a_batch_undoes_only_its_own_writes(executor: Executor,
                                                         state: FakeState) -> None:
    send(executor, CREATE, "t1", template_id="small", max_number=1)
    batch = executor.execute_batch([
        Envelope(UPDATE, "u1", {"machine_id": "m1", "status": "pending", "request_id": "req-t1"}),
        Envelope(UPDATE, "u2", {"machine_id": "m2", "status": "pending", "request_id": "req-t1"}),
    ])
    assert [o.record.outcome for o in batch.outcomes
            if not isinstance(o, Exception)] == ["applied", "rejected"]
    assert set(state.machines) == {"m1"}


FAIL_LAUNCH = "commands.report_launch_failure"


def test_machines_that_will_not_come_end_the_request_now(executor: Executor,
                                                         state: FakeState) -> None:
    """A provider whose launch was partly refused: the request ends when the machines it got
    are up, with the provider's reason, not at its deadline."""
    send(executor, CREATE, "t1", template_id="big", max_number=5)
    send(executor, UPDATE, "u1", machine_id="m1", status="running", request_id="req-t1")
    assert send(executor, FAIL_LAUNCH, "f1", request_id="req-t1", count=3,
                message="InsufficientInstanceCapacity: no m5.large in us-east-1a") == "applied"
    assert state.requests["req-t1"].status == "in_progress"  # one more may still come
    send(executor, UPDATE, "u2", machine_id="m2", status="running", request_id="req-t1")
    request = state.requests["req-t1"]
    assert (request.status, request.unfulfilled) == ("complete_with_error", 3)
    view = orjson.loads([d.body for d in state.outbox
                         if d.key == keys.request_key("req-t1")][-1])
    assert view["unfulfilled"] == 3 and "InsufficientInstanceCapacity" in view["message"]
    # The same report again (a redelivered feed event) changes nothing.
    again = executor.execute(Envelope(FAIL_LAUNCH, "f1", {
        "request_id": "req-t1", "count": 3, "message": "x"}))
    assert again.duplicate and state.requests["req-t1"].unfulfilled == 3


def test_more_failures_than_machines_missing_are_refused(executor: Executor,
                                                         state: FakeState) -> None:
    send(executor, CREATE, "t1", template_id="big", max_number=2)
    send(executor, UPDATE, "u1", machine_id="m1", status="pending", request_id="req-t1")
    assert send(executor, FAIL_LAUNCH, "f1", request_id="req-t1", count=2,
                message="refused") == "rejected"
    assert "at most 1" in (state.commands["f1"].reason or "")
    assert send(executor, FAIL_LAUNCH, "f2", request_id="nope", count=1,
                message="refused") == "rejected"
    assert state.requests["req-t1"].unfulfilled == 0


def test_a_machine_launched_after_its_slot_was_given_up_is_released(
        executor: Executor, state: FakeState) -> None:
    """The provider said the machine would not come, then it came (a retried launch): it
    is recorded late and a release event tells the provider to terminate it."""
    send(executor, CREATE, "t1", template_id="small", max_number=1)
    send(executor, FAIL_LAUNCH, "f1", request_id="req-t1", count=1, message="refused")
    assert state.requests["req-t1"].status == "complete_with_error"
    send(executor, UPDATE, "u1", machine_id="m1", status="running", request_id="req-t1")
    assert state.machines["m1"].late
    assert state.requests["req-t1"].status == "complete_with_error"
    feed = [orjson.loads(d.body) for d in state.outbox if d.key.startswith("hf:v1:feed")]
    [release] = [e for e in feed if e["type"] == "release"]
    assert [m["machine_id"] for m in release["machines"]] == ["m1"]


def test_weighted_machines_count_their_units(executor: Executor, state: FakeState) -> None:
    """A request for 5 units: a machine of weight 2 gives two; the request completes when
    the units of its running machines reach 5, and a machine beyond them is refused."""
    send(executor, CREATE, "w", template_id="big", max_number=5)
    for n, (machine, units) in enumerate([("a", 2), ("b", 2)]):
        assert send(executor, UPDATE, f"w{n}", machine_id=machine, status="running",
                    request_id="req-w", metadata={"units": units}) == "applied"
    assert state.requests["req-w"].status == "in_progress"
    # Two units launched too few: one will not come (counted in units), one more may.
    assert send(executor, "commands.report_launch_failure", "lf", request_id="req-w",
                count=2, message="short") == "rejected"
    assert send(executor, UPDATE, "w2", machine_id="c", status="running", request_id="req-w",
                metadata={"units": 2}) == "applied"  # overshoot: 6 of 5, as fleets do
    assert state.requests["req-w"].status == "complete"
    assert send(executor, UPDATE, "w3", machine_id="d", status="running",
                request_id="req-w") == "rejected"
    assert "already has its 5 machine(s) (6 units)" in str(state.commands["w3"].reason)


def test_a_launch_failure_in_units_ends_a_weighted_request(executor: Executor,
                                                          state: FakeState) -> None:
    send(executor, CREATE, "v", template_id="big", max_number=4)
    send(executor, UPDATE, "v0", machine_id="a", status="running", request_id="req-v",
         metadata={"units": 2})
    assert send(executor, "commands.report_launch_failure", "vf", request_id="req-v",
                count=2, message="no capacity") == "applied"
    assert state.requests["req-v"].status == "complete_with_error"


def test_a_report_overtaken_after_waiting_is_superseded_not_rejected(
        executor: Executor, state: FakeState) -> None:
    """pending arrived first and running second; running's retry came back first. Without
    observed_at, each is as old as its arrival: pending is the older report."""
    send(executor, CREATE, "t1", template_id="small", max_number=2)
    running = Envelope(UPDATE, "r", {"machine_id": "m1", "status": "running",
                                     "request_id": "req-t1"}, arrived_at=500.2)
    pending = Envelope(UPDATE, "p", {"machine_id": "m1", "status": "pending",
                                     "request_id": "req-t1"}, arrived_at=500.1)
    assert executor.execute(running).record.outcome == "applied"
    assert executor.execute(pending).record.outcome == "superseded"
    assert state.machines["m1"].status == "running"
