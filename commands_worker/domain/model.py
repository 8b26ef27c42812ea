"""The domain: templates, requests and machines, and the rules of their states.

Plain data and functions: no I/O, no Celery, no Redis. Handlers load aggregates, ask these
rules what follows, and save the result with the version they loaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

from commands_worker.domain.errors import IllegalTransition, MachineLimitReached
from shared import hostfactory as hf
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
# Nothing leaves these: a machine in one is gone for good. (HostFactory counts a stopped
# machine as given back too: shared.hostfactory.GONE, its own rule for its answers.)
TERMINAL: Final = frozenset({"terminated", "failed"})
UNLIMITED: Final = -1
_RESTARTS: Final = frozenset({("stopped", "pending"), ("stopped", "running")})
MACHINE_FIELDS: Final = (
    "name", "private_ip", "public_ip", "instance_type", "price_type", "launch_time", "message",
    "instance_tags", "cloud_host_id", "rc_account", "reclaim_at", "units",
)


@dataclass(frozen=True)
class Template:
    template_id: str
    max_number: int  # -1: unlimited; 0: none may be requested
    attributes: dict[str, Any]
    document: dict[str, Any]
    # The bytes of its userDataScript (base64), read when the templates file was loaded:
    # the acquire event carries them, so no provider reads a file an event names.
    user_data: str | None = None

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
    # The open (or last) return request that gives this machine back.
    return_request_id: str | None = None
    # Not up by its request's deadline (or first reported after it): it counts as failed
    # for that request, and the provider is to release it.
    late: bool = False
    # Set by a report that gave the machine its host name (or a new one); not stored.
    renamed: bool = field(default=False, compare=False)

    @property
    def view_result(self) -> str:
        """The view's result for a machine of an acquire request (the contract's rule:
        ``succeed`` when running, ``fail`` when failed, terminated or late, ``executing``
        otherwise). HostFactory's answers use ``shared.hostfactory``'s table, which also
        fails a stopping or stopped machine and waits for a running one's address."""
        if self.late or self.is_gone:
            return "fail"
        return "succeed" if self.status == "running" else "executing"

    @property
    def is_gone(self) -> bool:
        """Terminated or failed: nothing leaves these states."""
        return self.status in TERMINAL

    @property
    def to_release(self) -> bool:
        """Late and still there: the provider is to terminate it."""
        return self.late and not self.is_gone

    @property
    def units(self) -> int:
        """The capacity units this machine gives its request (a weighted instance type's
        weight; 1 when its provider said none)."""
        value = self.details.get("units")
        return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 \
            else 1

    def result_in(self, kind: str) -> str:
        return self.view_result if kind == hf.ACQUIRE else hf.machine_result(kind, self.status)[0]

    def changed(self, now: float) -> None:
        self.updated_at = now
        self.version += 1

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
        name = self.details.get("name")
        self.details.update({k: v for k, v in details.items() if v is not None})
        self.renamed = self.details.get("name") != name
        self.observed_at = observed_at
        self.updated_at = now
        self.version += 1


def transition_allowed(current: str, new: str) -> bool:
    if current in TERMINAL:
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
    kind: str = hf.ACQUIRE
    deadline_at: float | None = None
    # A return request: the machines it lists that no machine of the store matches, or that
    # another open return request already gives back; they count as returned.
    unknown_machines: list[dict[str, Any]] = field(default_factory=list)
    # Ended by its deadline (the worker's one expiry change), not by its machines.
    expired: bool = False
    # An acquire request's machines the provider said will not come, and why (its last word).
    unfulfilled: int = 0
    message: str | None = None

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_REQUEST_STATUSES

    def is_late(self, observed_at: float, reported: int = 0) -> bool:
        """A machine first reported now, after others giving ``reported`` units, is late:
        past the deadline, the request ended by it already, or every unit it still waited
        for was said not to come (HostFactory may have been told it failed)."""
        return self.expired or (self.deadline_at is not None and observed_at > self.deadline_at
                                ) or reported + self.unfulfilled >= self.max_number

    def room_for_failures(self, reported: int) -> int:
        """How many more units the provider may say will not come, ``reported`` units of
        machines being known."""
        return self.max_number - reported - self.unfulfilled

    def fail_launch(self, count: int, message: str, machines: list[Machine], now: float) -> None:
        """``count`` machines will not come: they count failed, and the request may end."""
        self.unfulfilled += count
        self.message = message
        self.on_machines_changed(machines, now)

    def expire(self, machines: list[Machine], now: float) -> list[Machine]:
        """The deadline passed: the request ends ``complete_with_error``; an acquire
        request's machines that were not up turn late. Returns the machines changed."""
        changed = []
        if self.kind == hf.ACQUIRE:
            for machine in machines:
                if machine.view_result != "succeed" and not machine.late:
                    machine.late = True
                    machine.changed(now)
                    changed.append(machine)
        self.status = "complete_with_error"
        self.expired = True
        self.updated_at = now
        self.version += 1
        return changed

    def admit_machine(self, reported: int) -> None:
        """Refuse a machine beyond what was asked: ``reported`` units are already known."""
        if reported >= self.max_number:
            raise MachineLimitReached(
                f"request {self.request_id} already has its {self.max_number} machine(s)"
                + (f" ({reported} units)" if reported != self.max_number else "")
            )

    def on_machines_changed(self, machines: list[Machine], now: float) -> None:
        """A machine of this request changed: the view changes, so the version grows."""
        self.status = request_status(self.status, self.max_number, machines, self.kind,
                                     len(self.unknown_machines), self.unfulfilled)
        self.updated_at = now
        self.version += 1


def units_in(machine: Machine, kind: str) -> int:
    """What a machine counts for in a request of ``kind``: its units toward an acquire
    request (HostFactory asked for units), one toward a return request (it lists machines)."""
    return machine.units if kind == hf.ACQUIRE else 1


def reported_units(machines: list[Machine]) -> int:
    return sum(m.units for m in machines)


def request_status(current: str, max_number: int, machines: list[Machine],
                   kind: str = hf.ACQUIRE, unknown: int = 0, unfulfilled: int = 0) -> str:
    """Final statuses stick; otherwise the status follows from the machines' results by
    HostFactory's rule (``shared.hostfactory``), ``running`` being ``pending`` until a
    machine is known and ``in_progress`` after. Listed machines nobody knows count as
    returned; machines said not to come, as failed."""
    if current in FINAL_REQUEST_STATUSES:
        return current
    results = ([r for m in machines for r in [m.result_in(kind)] * units_in(m, kind)]
               + ["succeed"] * unknown + ["fail"] * unfulfilled)
    status = hf.request_status(max_number, results, past_deadline=False)
    if status == "running":
        return "in_progress" if machines or unfulfilled else "pending"
    return status
