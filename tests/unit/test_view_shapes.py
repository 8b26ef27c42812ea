"""The view's shape has one source of truth, checked three ways: the documents the worker
writes carry exactly the fields of the shared view models (no more, no fewer, in the
models' order), and the contract page lists exactly those fields. A field dropped or renamed
in any one of them fails here."""

from __future__ import annotations

import re

import orjson

from commands_worker.domain.model import Machine, Request
from commands_worker.service_layer.documents import machine_dict, request_docs
from shared.views import MachineView, RequestView
from tests.conftest import ROOT

# Written only when there is something to say.
MACHINE_OPTIONAL = {"metadata"}
REQUEST_OPTIONAL = {"unknown_machines", "unfulfilled", "message", "machines"}


def _contract_fields(endpoint: str) -> list[str]:
    row = next(line for line in (ROOT / "docs" / "contract.md").read_text().splitlines()
               if line.startswith(f"| `GET {endpoint}"))
    listed = re.search(r"`\{([^}]*)\}`", row)
    assert listed, row
    return [f.strip().rstrip("?").split("[")[0] for f in listed.group(1).split(",")]


def _machine() -> Machine:
    return Machine("m1", "r1", "running", 1.0, 1.0, 2.0, version=1,
                   details={"name": "h", "private_ip": "10.0.0.1", "units": 2, "extra": 1})


def test_the_machine_view_written_is_the_model_and_the_contract() -> None:
    written = list(machine_dict(_machine()))
    assert written == list(MachineView.model_fields)  # extra metadata: every field written
    assert _contract_fields("/machines/{machine_id}") == list(MachineView.model_fields)


def test_the_request_view_written_is_the_model_and_the_contract() -> None:
    request = Request("r1", "t", 2, {}, "in_progress", 1.0, 2.0, version=3, unfulfilled=1,
                      message="x", deadline_at=9.0,
                      unknown_machines=[{"name": "ghost", "machine_id": None}])
    full, _ = request_docs(request, [_machine()])
    written = list(orjson.loads(full.body))
    model = list(RequestView.model_fields)
    assert [f for f in written if f in model] == [f for f in model if f in written]
    assert set(model) - set(written) <= REQUEST_OPTIONAL
    assert set(written) == set(model)  # this one carries every optional field
    assert set(_contract_fields("/requests/{request_id}")) == set(model)
