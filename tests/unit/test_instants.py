"""One parser of instants: a zone-less time is UTC wherever the worker runs (the host's time
zone never changes an answer); observed_at must carry a zone."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest
from pydantic import ValidationError

from commands_worker.entrypoints.admission import admit
from shared import instants
from shared.commands import UpdateMachineStatus
from shared.hostfactory import hf_machine

NEW_YEAR = 1_767_225_600.0  # 2026-01-01T00:00:00Z


@pytest.fixture
def far_east() -> Iterator[None]:
    before = os.environ.get("TZ")
    os.environ["TZ"] = "Asia/Tokyo"
    time.tzset()
    yield
    if before is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = before
    time.tzset()


def test_a_zone_less_instant_is_utc_whatever_the_host(far_east: None) -> None:
    assert instants.epoch("2026-01-01T00:00:00") == NEW_YEAR
    assert instants.epoch("2026-01-01T09:00:00+09:00") == NEW_YEAR
    assert instants.epoch("2026-01-01T00:00:00Z") == NEW_YEAR
    # A Celery eta without a zone, and a provider's launch_time text, read the same way.
    item = admit({"task": "commands.create_request", "id": "t", "eta": "2026-01-01T00:00:00"},
                 lambda: ([], {"template_id": "x", "max_number": 1}, {}), None,
                 lambda: NEW_YEAR - 10)
    assert item.due_at == NEW_YEAR
    assert hf_machine({"machine_id": "m", "launch_time": "2026-01-01T00:00:00"},
                      "succeed", "")["launchtime"] == int(NEW_YEAR)


def test_observed_at_needs_a_zone() -> None:
    with pytest.raises(ValidationError, match="needs a time zone"):
        UpdateMachineStatus(machine_id="m", status="running",
                            observed_at="2026-01-01T00:00:00")
