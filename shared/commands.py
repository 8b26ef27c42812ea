"""Command models: what a producer may send, validated strictly at the worker's edge.

Unknown fields are refused, nothing is coerced from nonsense (``"3"`` is not a number,
``true`` is not an id) and every size is bounded, so one bad producer cannot hurt the store.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Final, Literal

import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    StrictStr,
    field_validator,
)

from shared import instants, names
from shared.ids import ID_PATTERN, MAX_ID_LEN

MAX_MACHINES_PER_REQUEST: Final = 10_000
MAX_DOCUMENT_BYTES: Final = 16 * 1024
MAX_MESSAGE_LEN: Final = 2_000
# observed_at may run ahead of the worker's clock by this much (clock skew), no more.
MAX_OBSERVED_AHEAD_S: Final = 300.0
OBSERVED_AT_EARLIEST: Final = 946_684_800.0  # 2000-01-01T00:00:00Z
MAX_RECLAIM_AHEAD_S: Final = 7 * 24 * 3600.0

Id = Annotated[StrictStr, Field(min_length=1, max_length=MAX_ID_LEN, pattern=ID_PATTERN)]
ShortText = Annotated[StrictStr, Field(max_length=256)]
# A host name: what machines are found by (a store column, a cache key), so no control
# characters (PostgreSQL refuses NUL in text, and no host is named with one).
HostName = Annotated[StrictStr, Field(min_length=1, max_length=256,
                                      pattern=r"^[^\x00-\x1f\x7f]+$")]

MachineStatus = Literal[
    "pending", "running", "stopping", "stopped", "shutting-down", "terminated", "failed"
]


def _bounded_document(value: dict[str, Any] | None, name: str) -> dict[str, Any] | None:
    if value is None:
        return None
    try:
        size = len(orjson.dumps(value))
    except TypeError as exc:  # pragma: no cover - JSON input always encodes
        raise ValueError(f"{name} must be a JSON object") from exc
    if size > MAX_DOCUMENT_BYTES:
        raise ValueError(f"{name} is {size} bytes encoded; the limit is {MAX_DOCUMENT_BYTES}")
    return value


def _epoch(name: str, value: float | int | str) -> float:
    """ISO-8601 with a zone, or epoch seconds, as epoch seconds."""
    if not isinstance(value, str):
        return float(value)
    try:
        return instants.epoch(value, zone_required=True)
    except instants.NoZone as exc:
        raise ValueError(f"{name} {exc}") from exc
    except ValueError as exc:
        raise ValueError(f"{name} must be ISO-8601 or epoch seconds") from exc


def _within_window(epoch: float) -> float:
    """A report from the future would freeze its machine (every later, real report would be
    older, so superseded); one from before ``OBSERVED_AT_EARLIEST`` is a broken clock."""
    latest = time.time() + MAX_OBSERVED_AHEAD_S
    if not OBSERVED_AT_EARLIEST <= epoch <= latest:
        raise ValueError(f"observed_at must lie between 2000-01-01 and "
                         f"{MAX_OBSERVED_AHEAD_S:.0f} s after the worker's clock")
    return epoch


def _tag_text(value: object) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


class Command(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    command_id: Id | None = None
    correlation_id: Id | None = None
    user_id: ShortText | None = None


class CreateRequest(Command):
    template_id: Id
    max_number: Annotated[StrictInt, Field(ge=1, le=MAX_MACHINES_PER_REQUEST)]
    attributes: dict[str, Any] | None = None
    request_id: Id | None = None

    @field_validator("attributes")
    @classmethod
    def _attributes_bounded(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        return _bounded_document(value, "attributes")


class MachineMetadata(BaseModel):
    """Known metadata is typed; other keys are kept as given (bounded in total size)."""

    model_config = ConfigDict(extra="allow", frozen=True, strict=True)

    name: HostName | None = None
    private_ip: Annotated[StrictStr, Field(max_length=64)] | None = None
    public_ip: Annotated[StrictStr, Field(max_length=64)] | None = None
    instance_type: ShortText | None = None
    price_type: ShortText | None = None
    launch_time: StrictInt | ShortText | None = None
    message: Annotated[StrictStr, Field(max_length=MAX_MESSAGE_LEN)] | None = None
    # HostFactory's: tags as an object or "k=v;k=v" (kept as "k=v;k=v"), the cloud's own id
    # of the host, the LSF account, and when the provider will take the host (a spot
    # interruption notice), ISO-8601 or epoch seconds (kept as epoch seconds).
    instance_tags: dict[str, StrictStr | StrictInt | StrictFloat | bool] | ShortText | None = None
    cloud_host_id: ShortText | None = None
    rc_account: ShortText | None = None
    reclaim_at: StrictFloat | StrictInt | StrictStr | None = None
    # The capacity units this machine gives its request (a weighted instance type, as a
    # template's vmTypes weights say); one when absent.
    units: Annotated[StrictInt, Field(ge=1, le=MAX_MACHINES_PER_REQUEST)] | None = None

    @field_validator("instance_tags")
    @classmethod
    def _tags_text(cls, value: dict[str, Any] | str | None) -> str | None:
        if value is None or isinstance(value, str):
            return value
        text = ";".join(f"{k}={_tag_text(v)}" for k, v in value.items())
        if len(text) > 1024 or any(";" in k or "=" in k for k in value):
            raise ValueError("instance_tags: keys may hold no ; or =, and 1024 characters in all")
        return text

    @field_validator("reclaim_at")
    @classmethod
    def _reclaim_epoch(cls, value: float | int | str | None) -> float | None:
        if value is None:
            return None
        epoch = _epoch("reclaim_at", value)
        if not OBSERVED_AT_EARLIEST <= epoch <= time.time() + MAX_RECLAIM_AHEAD_S:
            raise ValueError("reclaim_at must lie between 2000-01-01 and a week from now")
        return epoch


class UpdateMachineStatus(Command):
    machine_id: Id
    status: MachineStatus
    request_id: Id | None = None
    metadata: MachineMetadata | None = None
    # ISO-8601 text or epoch seconds; normalised to epoch seconds (float).
    observed_at: StrictFloat | StrictInt | StrictStr | None = None

    @field_validator("metadata", mode="before")
    @classmethod
    def _metadata_bounded(cls, value: Any) -> Any:
        if isinstance(value, dict):
            _bounded_document(value, "metadata")
        return value

    @field_validator("observed_at")
    @classmethod
    def _observed_at_epoch(cls, value: float | int | str | None) -> float | None:
        if value is None:
            return None
        return _within_window(_epoch("observed_at", value))

    def observed_epoch(self) -> float | None:
        # After validation observed_at is always a float or None.
        return None if self.observed_at is None else float(self.observed_at)


class ReturnedMachine(BaseModel):
    """A machine to give back: its host name, and its id when the caller knows it."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    name: HostName
    machine_id: Id | None = None


class ReturnMachines(Command):
    machines: Annotated[list[ReturnedMachine],
                        Field(min_length=1, max_length=MAX_MACHINES_PER_REQUEST)]
    request_id: Id | None = None


class ReportLaunchFailure(Command):
    """A provider's word that ``count`` machines of an acquire request will not come (the
    cloud refused the launch), and why: the request counts them failed and can end now,
    not at its deadline. Send it once per launch attempt, with a ``command_id`` derived
    from the feed event, so a redelivered event changes nothing."""

    request_id: Id
    count: Annotated[StrictInt, Field(ge=1, le=MAX_MACHINES_PER_REQUEST)]
    message: Annotated[StrictStr, Field(min_length=1, max_length=MAX_MESSAGE_LEN)]


# Task name -> the model its kwargs must validate against.
COMMAND_MODELS: Final[dict[str, type[Command]]] = {
    names.CREATE_REQUEST_TASK: CreateRequest,
    names.UPDATE_MACHINE_STATUS_TASK: UpdateMachineStatus,
    names.RETURN_MACHINES_TASK: ReturnMachines,
    names.REPORT_LAUNCH_FAILURE_TASK: ReportLaunchFailure,
}
