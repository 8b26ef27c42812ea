"""The domain: templates, requests and machines, and the rules of their states.

Plain data and functions: no I/O, no Celery, no Redis. Handlers load aggregates, ask these
rules what follows, and save the result with the version they loaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

from commands_worker.domain.errors import IllegalTransition, MachineLimitReached
from shared.views import FINAL_REQUEST_STATUSES

# EC2's lifecycle order. Reporters poll, so any forward skip is legal.
_LIFECYCLE: Final[dict[str, int]] = {
    "pending": 0,
    "running": 1,
    "stopping": 2,
    "stopped": 3,
    "shutting-down": 4,
    "terminated": 5,
}
_TERMINAL: Final = frozenset({"terminated", "failed"})
UNLIMITED: Final = -1
_RESTARTS: Final = frozenset({("stopped", "pending"), ("stopped", "running")})
MACHINE_FIELDS: Final = (
    "name", "private_ip", "public_ip", "instance_type", "price_type", "launch_time", "message",
    "instance_tags", "cloud_host_id", "rc_account", "reclaim_at",
)


@dataclass(frozen=True)
class Template:
    template_id: str
    max_number: int  # -1: unlimited; 0: none may be requested
    attributes: dict[str, Any]
    document: dict[str, Any]

    def exceeded_by(self, wanted: int) -> bool:
        """Whether asking for ``wanted`` machines goes beyond what this template allows."""
        return self.max_number != UNLIMITED and wanted > self.max_number


@dataclass
class Machine:
    machine_id: str
    request_id: str
    status: str
    observed_at: float
    created_at: float
    updated_at: float
    version: int = 0
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def result(self) -> str:
        """HostFactory's result for a machine of an acquire request."""
        if self.status == "running":
            return "succeed"
        if self.status in _TERMINAL:
            return "fail"
        return "executing"

    def is_stale(self, observed_at: float) -> bool:
        return self.version > 0 and observed_at < self.observed_at

    def apply_report(
        self, status: str, details: dict[str, Any], observed_at: float, now: float
    ) -> None:
        """Move to ``status``; raises ``IllegalTransition``. The caller checks staleness first."""
        if self.version > 0 and not transition_allowed(self.status, status):
            raise IllegalTransition(
                f"machine {self.machine_id} cannot go from {self.status} to {status}"
            )
        self.status = status
        self.details.update({k: v for k, v in details.items() if v is not None})
        self.observed_at = observed_at
        self.updated_at = now
        self.version += 1


def transition_allowed(current: str, new: str) -> bool:
    if current in _TERMINAL:
        return new == current
    if new == "failed" or (current, new) in _RESTARTS:
        return True
    return _LIFECYCLE[new] >= _LIFECYCLE[current]


@dataclass
class Request:
    request_id: str
    template_id: str
    max_number: int
    attributes: dict[str, Any]
    status: str
    created_at: float
    updated_at: float
    version: int = 0
    seq: int = 0

    def admit_machine(self, machine_count: int) -> None:
        if machine_count >= self.max_number:
            raise MachineLimitReached(
                f"request {self.request_id} already has its {self.max_number} machine(s)"
            )

    def on_machines_changed(self, machines: list[Machine], now: float) -> None:
        """A machine of this request changed: the view changes, so the version grows."""
        self.status = request_status(self.status, self.max_number, machines)
        self.updated_at = now
        self.version += 1


def request_status(current: str, max_number: int, machines: list[Machine]) -> str:
    """Final statuses stick; otherwise the status follows from the machines' results."""
    if current in FINAL_REQUEST_STATUSES:
        return current
    if not machines:
        return "pending"
    results = [m.result for m in machines]
    if len(machines) >= max_number:
        if results.count("succeed") >= max_number:
            return "complete"
        if "executing" not in results and "fail" in results:
            return "complete_with_error"
    return "in_progress"
