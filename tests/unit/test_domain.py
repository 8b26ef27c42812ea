import pytest

from commands_worker.domain.errors import IllegalTransition
from commands_worker.domain.model import Machine, request_status, transition_allowed
from shared import hostfactory as hf


def machine(status: str, version: int = 1) -> Machine:
    return Machine("m", "r", status, observed_at=10.0, created_at=0.0, updated_at=0.0,
                   version=version)


@pytest.mark.parametrize(("current", "new"), [
    ("pending", "running"), ("pending", "terminated"), ("running", "stopping"),
    ("stopped", "running"), ("stopped", "pending"), ("running", "failed"),
    ("running", "running"), ("terminated", "terminated"),
])
def test_legal_transitions(current: str, new: str) -> None:
    assert transition_allowed(current, new)


@pytest.mark.parametrize(("current", "new"), [
    ("running", "pending"), ("terminated", "running"), ("failed", "running"),
    ("failed", "terminated"), ("shutting-down", "stopped"), ("stopping", "running"),
])
def test_illegal_transitions(current: str, new: str) -> None:
    assert not transition_allowed(current, new)


def test_illegal_report_leaves_machine_unchanged() -> None:
    m = machine("terminated")
    with pytest.raises(IllegalTransition, match="terminated to running"):
        m.apply_report("running", {}, 20.0, 20.0)
    assert (m.status, m.version) == ("terminated", 1)


def test_the_views_result_rule() -> None:
    """The view's rule (the contract's): succeed when running, fail when failed, terminated
    or late, executing otherwise. HostFactory's answers use its own table
    (shared.hostfactory, tests/unit/test_hostfactory_table.py), which differs: a stopped
    machine fails there, and a running one waits for its address."""
    assert machine("running").view_result == "succeed"
    assert machine("failed").view_result == "fail"
    assert machine("terminated").view_result == "fail"
    assert machine("pending").view_result == "executing"
    assert machine("stopped").view_result == "executing"
    assert hf.machine_result(hf.ACQUIRE, "stopped")[0] == "fail"  # HostFactory's, not ours
    assert hf.machine_result(hf.ACQUIRE, "running", addressed=False)[0] == "executing"


def test_older_report_is_stale_newer_is_not() -> None:
    m = machine("running")
    assert m.is_stale(9.0)
    assert not m.is_stale(10.0)
    assert not m.is_stale(11.0)


def test_request_status_rules() -> None:
    running, failed, pending = machine("running"), machine("failed"), machine("pending")
    assert request_status("pending", 2, []) == "pending"
    assert request_status("pending", 2, [pending]) == "in_progress"
    assert request_status("in_progress", 2, [running]) == "in_progress"
    assert request_status("in_progress", 2, [running, running]) == "complete"
    assert request_status("in_progress", 2, [running, failed]) == "complete_with_error"
    assert request_status("in_progress", 2, [running, pending]) == "in_progress"
    # Final statuses stick while machines go on changing.
    assert request_status("complete", 2, [failed, failed]) == "complete"
    assert request_status("complete_with_error", 2, [running, running]) == "complete_with_error"
