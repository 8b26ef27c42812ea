"""View models: the JSON documents the query service serves (and the OpenAPI schemas).

The projector writes these documents once, with ``version`` as the first field, and the query
service returns them byte for byte; these models document them and let clients parse them.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

RequestStatus = Literal["pending", "in_progress", "complete", "complete_with_error"]
MachineResult = Literal["executing", "succeed", "fail"]
Outcome = Literal["applied", "rejected", "superseded"]

REQUEST_STATUSES: tuple[RequestStatus, ...] = (
    "pending", "in_progress", "complete", "complete_with_error")
FINAL_REQUEST_STATUSES = frozenset({"complete", "complete_with_error"})


class _View(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


class MachineView(_View):
    version: int
    machine_id: str
    request_id: str
    status: str
    result: MachineResult
    name: str | None = None
    private_ip: str | None = None
    public_ip: str | None = None
    instance_type: str | None = None
    price_type: str | None = None
    launch_time: int | str | None = None
    message: str | None = None
    instance_tags: str | None = None
    cloud_host_id: str | None = None
    rc_account: str | None = None
    reclaim_at: float | None = None
    # The capacity units it gives its acquire request (a weighted instance type; else 1).
    units: int = 1
    # The return request giving it back; whether it was not up by its request's deadline.
    return_request_id: str | None = None
    late: bool = False
    # The provider's own metadata keys, beyond the typed ones (written only when given).
    metadata: dict[str, Any] | None = None
    observed_at: float | None = None
    created_at: float
    updated_at: float


class RequestView(_View):
    version: int
    request_id: str
    template_id: str
    max_number: int
    status: RequestStatus
    attributes: dict[str, Any]
    # acquire, or return (a return request's machines are those it gives back).
    kind: Literal["acquire", "return"] = "acquire"
    deadline_at: float | None = None
    expired: bool = False
    unknown_machines: list[dict[str, Any]] | None = None
    # An acquire request's machines the provider said will not come, and its reason.
    unfulfilled: int = 0
    message: str | None = None
    machines: list[MachineView] | None = None
    machine_count: int
    created_at: float
    updated_at: float


class CommandOutcomeView(_View):
    version: int
    command_id: str
    task: str
    outcome: Outcome
    reason: str | None = None
    request_id: str | None = None
    machine_id: str | None = None
    recorded_at: float


class TemplatesPage(BaseModel):
    templates: list[dict[str, Any]]
    total: int


class RequestsPage(BaseModel):
    requests: list[RequestView]
    next_cursor: str | None


class ErrorBody(BaseModel):
    error: str
    detail: Any = None
