"""HOSTFACTORY.md's state -> result table, transcribed row by row, against the one function
that applies it (``shared.hostfactory.machine_result``): every machine state x request type
x deadline case, and the request status rule."""

from __future__ import annotations

import time

import pytest

from shared import hostfactory as hf

STATES = ("pending", "running", "stopping", "shutting-down", "stopped", "terminated",
          "failed", None)
# machine state -> (acquire, return), before the deadline; None is "unknown to the provider".
TABLE = {
    "pending": ("executing", "executing"),
    "running": ("succeed", "executing"),
    "stopping": ("fail", "executing"),
    "shutting-down": ("fail", "executing"),
    "stopped": ("fail", "succeed"),
    "terminated": ("fail", "succeed"),
    "failed": ("fail", "succeed"),
    None: ("fail", "succeed"),
}


@pytest.mark.parametrize("state", STATES)
@pytest.mark.parametrize("kind", [hf.ACQUIRE, hf.RETURN])
@pytest.mark.parametrize("past_deadline", [False, True])
def test_every_state_type_and_deadline_case(state: str | None, kind: str,
                                            past_deadline: bool) -> None:
    before = TABLE[state][0 if kind == hf.ACQUIRE else 1]
    result, message = hf.machine_result(kind, state, past_deadline=past_deadline)
    if past_deadline and before == "executing":
        # "deadline passed, not yet final": fail, saying which deadline.
        assert result == "fail"
        assert message == (hf.DEADLINE_PASSED if kind == hf.ACQUIRE else hf.NOT_RETURNED)
    else:
        assert result == before
    assert (message != "") == (result == "fail")


def test_running_without_a_name_or_address_is_still_executing() -> None:
    assert hf.machine_result(hf.ACQUIRE, "running", addressed=False)[0] == "executing"
    assert hf.machine_result(hf.ACQUIRE, "running", addressed=False,
                             past_deadline=True)[0] == "fail"


@pytest.mark.parametrize("state", STATES)
def test_a_late_machine_of_an_acquire_request_fails(state: str | None) -> None:
    result, message = hf.machine_result(hf.ACQUIRE, state, late=True)
    assert result == "fail" and message


@pytest.mark.parametrize(("asked", "results", "past", "expected"), [
    (3, [], False, "running"),
    (3, ["succeed", "succeed"], False, "running"),          # fewer reported than asked
    (3, ["succeed", "succeed"], True, "complete_with_error"),
    (3, ["succeed", "executing", "succeed"], True, "running"),  # still executing
    (2, ["succeed", "succeed"], False, "complete"),
    (2, ["succeed", "fail"], False, "complete_with_error"),
    (1, [], True, "complete_with_error"),
])
def test_request_status(asked: int, results: list[str], past: bool, expected: str) -> None:
    assert hf.request_status(asked, results, past) == expected


def test_a_view_past_its_deadline_answers_final_before_the_worker_acts() -> None:
    now = time.time()
    view = {"request_id": "req-a", "kind": "acquire", "status": "in_progress",
            "max_number": 2, "deadline_at": now - 1, "machines": [
                {"machine_id": "m1", "status": "running", "name": "h1", "private_ip": "10.0.0.1",
                 "created_at": now},
                {"machine_id": "m2", "status": "pending", "created_at": now}]}
    answer = hf.hf_request(view, now)
    assert answer["status"] == "complete_with_error"
    assert [m["result"] for m in answer["machines"]] == ["succeed", "fail"]
    assert hf.hf_request({**view, "deadline_at": now + 60}, now)["status"] == "running"


def test_time_ordered_ids_carry_their_time() -> None:
    now = time.time()
    ident = hf.time_ordered_id(now)
    assert abs((hf.issued_at(f"req-{ident}") or 0) - now) < 0.002
    assert hf.issued_at("req-not-a-uuid") is None
    assert hf.issued_at("req-0b5f1b6e-8d0c-4b7e-9a77-1c1d8e3e2f10") is None  # version 4


@pytest.mark.parametrize(("status", "reclaim_in", "expected"), [
    ("running", None, None), ("pending", None, None), ("stopping", None, None),
    ("shutting-down", None, 0),
    ("terminated", None, 0), ("stopped", None, 0), ("failed", None, 0),
    ("running", 120, 120), ("running", -30, 0),
])
def test_grace_period(status: str, reclaim_in: int | None, expected: int | None) -> None:
    now = 1_800_000_000.0
    machine = {"status": status,
               "reclaim_at": None if reclaim_in is None else now + reclaim_in}
    assert hf.grace_period(machine, now) == expected


def test_a_machine_that_never_gets_an_address_does_not_keep_a_request_running() -> None:
    """The view counts a running machine as up; HostFactory needs its name and address. Past
    the deadline, the request ends rather than stay running for ever."""
    now = time.time()
    view = {"request_id": "req-a", "kind": "acquire", "status": "complete", "max_number": 1,
            "deadline_at": now + 60, "machines": [
                {"machine_id": "m1", "status": "running", "created_at": now}]}
    assert hf.hf_request(view, now)["status"] == "running"
    late = hf.hf_request({**view, "deadline_at": now - 1}, now)
    assert late["status"] == "complete_with_error"
    assert late["machines"][0]["result"] == "fail"


def test_machines_said_not_to_come_fail_the_request_with_the_providers_reason() -> None:
    now = time.time()
    machine = {"machine_id": "i-1", "status": "running", "name": "ip-10-0-0-1.ec2.internal",
               "private_ip": "10.0.0.1", "launch_time": int(now)}
    view = {"request_id": "req-1", "kind": "acquire", "max_number": 3, "deadline_at": now + 600,
            "machines": [machine], "unfulfilled": 2,
            "message": "EC2 refused: InvalidSubnetID.NotFound: The subnet ID does not exist"}
    answer = hf.hf_request(view, now)
    assert answer["status"] == "complete_with_error"
    assert answer["message"].startswith("2 of 3 machine(s) will not come: EC2 refused: "
                                        "InvalidSubnetID.NotFound")
    assert [m["result"] for m in answer["machines"]] == ["succeed"]
    # While the launched machine is still coming up, the request is still running.
    running = hf.hf_request({**view, "machines": [{**machine, "status": "pending"}]}, now)
    assert running["status"] == "running" and "will not come" in running["message"]


def test_a_kept_status_entry_follows_its_view_and_its_deadline() -> None:
    """The query service keeps each request's getRequestStatus entry for the view version it
    was made from: the same answer as shaping anew, before the deadline and after it, and a
    new version is shaped anew."""
    import orjson

    from queries_service.hostfactory import ShapedEntries

    def view(version: int, status: str) -> bytes:
        return orjson.dumps({"version": version, "request_id": "req-1", "kind": hf.ACQUIRE,
                             "max_number": 1, "deadline_at": 1_000.0, "machines": [
                                 {"machine_id": "m1", "name": "h1", "private_ip": "10.0.0.1",
                                  "status": status}]})

    shaped = ShapedEntries()
    key = "hf:v1:request:req-1"
    for doc, now in ((view(1, "pending"), 900.0), (view(1, "pending"), 999.0),
                     (view(1, "pending"), 1_001.0), (view(1, "pending"), 5_000.0),
                     (view(2, "running"), 5_001.0), (view(2, "running"), 9_000.0)):
        assert orjson.loads(shaped.entry(key, doc, now)) == hf.hf_request(orjson.loads(doc), now)
    assert orjson.loads(shaped.entry(key, view(1, "pending"), 999.0))["status"] == "running"
    assert orjson.loads(shaped.entry(key, view(1, "pending"), 1_001.0))["status"] == \
        "complete_with_error"
    first = shaped.entry(key, view(3, "running"), 10.0)
    assert shaped.entry(key, view(3, "running"), 20.0) is first  # kept, not made again
    small = ShapedEntries(max_bytes=len(first) + 10)
    small.entry(key, view(3, "running"), 10.0)
    small.entry("hf:v1:request:req-2", view(3, "running").replace(b"req-1", b"req-2"), 10.0)
    assert small.size <= small.max_bytes and list(small.entries) == ["hf:v1:request:req-2"]
