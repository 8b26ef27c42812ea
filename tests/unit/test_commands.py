import pytest
from pydantic import ValidationError

from shared.commands import CreateRequest, UpdateMachineStatus


def test_create_request_accepts_the_contract() -> None:
    cmd = CreateRequest.model_validate({
        "template_id": "x86-small", "max_number": 2, "attributes": {"a": 1},
        "request_id": "req-1", "command_id": "c-1", "correlation_id": "corr", "user_id": "u"})
    assert cmd.max_number == 2


@pytest.mark.parametrize("bad", [
    {"template_id": "t", "max_number": "3"},            # no coercion from text
    {"template_id": "t", "max_number": True},           # a bool is not a number
    {"template_id": "t", "max_number": 0},
    {"template_id": "t", "max_number": 10_001},
    {"template_id": "t", "max_number": 1, "colour": "red"},  # unknown field
    {"template_id": "", "max_number": 1},
    {"template_id": "a/b", "max_number": 1},            # ids become keys and URL paths
    {"template_id": "t" * 201, "max_number": 1},
    {"template_id": "t", "max_number": 1, "attributes": {"x": "y" * 20_000}},
    {"max_number": 1},
])
def test_create_request_refuses_nonsense(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        CreateRequest.model_validate(bad)


def test_observed_at_accepts_iso_and_epoch() -> None:
    iso = UpdateMachineStatus.model_validate(
        {"machine_id": "m", "status": "running", "observed_at": "2026-01-01T00:00:00Z"})
    epoch = UpdateMachineStatus.model_validate(
        {"machine_id": "m", "status": "running", "observed_at": 1767225600})
    assert iso.observed_epoch() == epoch.observed_epoch() == 1767225600.0


@pytest.mark.parametrize("bad", [
    {"machine_id": "m", "status": "RUNNING"},
    {"machine_id": "m", "status": "exploded"},
    {"machine_id": "m", "status": "running", "observed_at": "yesterday"},
    {"machine_id": "m", "status": "running", "observed_at": "2026-01-01T00:00:00"},  # no zone
    {"machine_id": "m", "status": "running", "observed_at": -5},
    {"machine_id": "m", "status": "running", "observed_at": "9999-01-01T00:00:00Z"},
    {"machine_id": "m", "status": "running", "observed_at": "0001-01-01T00:00:00Z"},
    {"machine_id": "m", "status": "running", "observed_at": 32_000_000_000},  # year 2984
    {"machine_id": "m", "status": "running", "observed_at": 86_400},  # 1970
    {"machine_id": "m", "status": "running", "metadata": {"name": 5}},
    {"machine_id": "m", "status": "running", "metadata": {"blob": "x" * 20_000}},
])
def test_update_machine_status_refuses_nonsense(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        UpdateMachineStatus.model_validate(bad)


def test_unknown_metadata_keys_are_kept() -> None:
    cmd = UpdateMachineStatus.model_validate(
        {"machine_id": "m", "status": "running", "metadata": {"zone": "a", "name": "n"}})
    assert cmd.metadata is not None
    assert cmd.metadata.model_dump(exclude_none=True) == {"zone": "a", "name": "n"}


def test_observed_at_may_run_a_little_ahead_of_the_clock_but_not_more() -> None:
    import time

    from shared.commands import MAX_OBSERVED_AHEAD_S

    soon = time.time() + MAX_OBSERVED_AHEAD_S / 2
    accepted = UpdateMachineStatus.model_validate(
        {"machine_id": "m", "status": "running", "observed_at": soon})
    assert accepted.observed_epoch() == soon
    with pytest.raises(ValidationError, match="after the worker's clock"):
        UpdateMachineStatus.model_validate(
            {"machine_id": "m", "status": "running",
             "observed_at": time.time() + 2 * MAX_OBSERVED_AHEAD_S})


def test_what_hostfactory_providers_report_is_typed_and_normalised() -> None:
    import time

    soon = time.time() + 120
    cmd = UpdateMachineStatus.model_validate({"machine_id": "m", "status": "running", "metadata": {
        "instance_tags": {"team": "hpc", "spot": True, "n": 2}, "cloud_host_id": "i-0a1b",
        "rc_account": "default", "reclaim_at": soon}})
    assert cmd.metadata is not None
    assert cmd.metadata.instance_tags == "team=hpc;spot=true;n=2"
    assert (cmd.metadata.cloud_host_id, cmd.metadata.rc_account) == ("i-0a1b", "default")
    assert cmd.metadata.reclaim_at == soon
    iso = UpdateMachineStatus.model_validate({"machine_id": "m", "status": "running",
                                              "metadata": {"instance_tags": "a=1;b=2",
                                                           "reclaim_at": "2026-01-01T00:00:00Z"}})
    assert iso.metadata is not None and iso.metadata.reclaim_at == 1767225600.0
    assert iso.metadata.instance_tags == "a=1;b=2"


@pytest.mark.parametrize("metadata", [
    {"instance_tags": {"a;b": "1"}},
    {"instance_tags": ["a=1"]},
    {"reclaim_at": "next tuesday"},
    {"reclaim_at": "2999-01-01T00:00:00Z"},
    {"cloud_host_id": 5},
])
def test_provider_metadata_that_makes_no_sense_is_refused(metadata: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        UpdateMachineStatus.model_validate({"machine_id": "m", "status": "running",
                                            "metadata": metadata})
