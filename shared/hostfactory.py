"""HostFactory's vocabulary: the state -> result table and the shapes of its answers.

One pure module, the only place these rules live (docs/hostfactory.md has the table): the
worker's domain asks it what a request's status is, the query service builds the answers of
``getRequestStatus`` and ``getReturnRequests`` with it, and the tests check it against every
machine state x request type x deadline case.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Iterable, Mapping
from typing import Any, Final, Literal

from shared import instants

Result = Literal["executing", "succeed", "fail"]
HfStatus = Literal["running", "complete", "complete_with_error"]

ACQUIRE: Final = "acquire"
# How long an acquire or a return request may take, by default, before it ends by its
# deadline (REQUEST_TIMEOUT_S, RETURN_TIMEOUT_S).
DEFAULT_DEADLINE_S: Final = 600.0
RETURN: Final = "return"
GONE: Final = frozenset({"stopped", "terminated", "failed"})
# getReturnRequests: machines in these states are gone or going (gracePeriod 0).
GONE_OR_GOING: Final = GONE | {"shutting-down"}
DEADLINE_PASSED: Final = "deadline passed: the machine was not up by the request's deadline"
LAUNCHED_LATE: Final = ("launched after the request's deadline; the provider is to release "
                        "it")
NOT_RETURNED: Final = "not returned in time: the return request's deadline passed"
ACCEPTED_NOT_APPLIED: Final = "accepted; the command worker has not applied it yet"
UNKNOWN_REQUEST: Final = "unknown request id: no such request was ever accepted"


def machine_result(kind: str, status: str | None, *, addressed: bool = True,
                   late: bool = False, past_deadline: bool = False) -> tuple[Result, str]:
    """A machine's result in a request of ``kind``, with the message that goes with it.

    ``status`` None: the provider does not know the machine. ``addressed``: it has a host
    name and a private IP (an acquired machine succeeds only then). ``late``: the worker
    recorded that it was not up by its acquire request's deadline. ``past_deadline``: the
    request's deadline has passed and the request is not final yet.
    """
    if kind == ACQUIRE:
        if late:
            return "fail", (LAUNCHED_LATE if status == "running" else DEADLINE_PASSED
                            if status in ("pending", None) else
                            f"{DEADLINE_PASSED}; the machine is {status}")
        if status == "running" and addressed:
            return "succeed", ""
        if status in ("pending", "running"):
            return ("fail", DEADLINE_PASSED) if past_deadline else ("executing", "")
        return "fail", ("unknown to the provider" if status is None
                        else f"the machine is {status}")
    if status is None or status in GONE:
        return "succeed", ""
    return ("fail", NOT_RETURNED) if past_deadline else ("executing", "")


def request_status(asked: int, results: Iterable[str], past_deadline: bool) -> HfStatus:
    """``running`` while a machine is executing, or fewer than asked were reported before the
    deadline; then ``complete`` when every asked machine succeeded, else
    ``complete_with_error``."""
    listed = list(results)
    if "executing" in listed or (len(listed) < asked and not past_deadline):
        return "running"
    if listed.count("succeed") >= asked:
        return "complete"
    return "complete_with_error"


# --- the answers, from the query service's views ------------------------------------------

def _launchtime(machine: Mapping[str, Any]) -> int:
    value = machine.get("launch_time")
    if isinstance(value, int | float) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return int(instants.epoch(value))
    return int(machine.get("created_at") or 0)


def hf_machine(machine: Mapping[str, Any], result: str, message: str) -> dict[str, Any]:
    """One machine as getRequestStatus lists it: exactly HostFactory's keys."""
    out: dict[str, Any] = {
        "machineId": machine["machine_id"],
        "name": machine.get("name") or "",
        "result": result,
        "status": machine.get("status") or "unknown",
        "privateIpAddress": machine.get("private_ip"),
        "launchtime": _launchtime(machine),
        "message": message,
        "priceType": machine.get("price_type"),
        "instanceType": machine.get("instance_type"),
        "instanceTags": machine.get("instance_tags") or "",
        "cloudHostId": machine.get("cloud_host_id"),
    }
    if result == "fail":
        # Never empty on fail: the table's reason, with the provider's own when it gave one.
        said = machine.get("message")
        out["message"] = (f"{message}: {said}" if said and message and said != message
                          else said or message or f"the machine is {out['status']}")
    if machine.get("public_ip"):
        out["publicIpAddress"] = machine["public_ip"]
    if machine.get("rc_account"):
        out["rcAccount"] = machine["rc_account"]
    return out


def hf_request(view: Mapping[str, Any], now: float) -> dict[str, Any]:
    """One entry of getRequestStatus from a request view (machines embedded)."""
    kind = view.get("kind") or ACQUIRE
    deadline = view.get("deadline_at")
    # Past the deadline, what is still executing fails, whatever the worker has recorded
    # (a request the view counts complete may hold a running machine HostFactory cannot use
    # yet: it must not stay "running" for ever).
    expired = (deadline is not None and now > deadline) or bool(view.get("expired"))
    machines = []
    for m in view.get("machines") or []:
        result, message = machine_result(
            kind, m.get("status"), addressed=bool(m.get("name") and m.get("private_ip")),
            late=bool(m.get("late")) and kind == ACQUIRE,
            past_deadline=expired)
        machines.append(hf_machine(m, result, message))
    for entry in view.get("unknown_machines") or []:
        machines.append(_unknown_machine(entry))
    asked = int(view.get("max_number") or 0)
    unfulfilled = int(view.get("unfulfilled") or 0)
    # An acquire request counts units (a weighted machine gives several); the answer lists
    # the machines there are.
    weights = [_units(m) if kind == ACQUIRE else 1 for m in view.get("machines") or []]
    weights += [1] * (len(machines) - len(weights))
    results = [r for m, w in zip(machines, weights, strict=True) for r in [m["result"]] * w]
    status = request_status(asked, results + ["fail"] * unfulfilled, expired)
    message = _request_message(kind, status, results, asked, expired)
    if unfulfilled:
        message = (f"{unfulfilled} of {asked} machine(s) will not come: "
                   f"{view.get('message') or 'the provider could not launch them'}"
                   + (f"; {message}" if message else ""))
    return {"requestId": view["request_id"], "status": status, "message": message,
            "machines": machines}


def _units(machine: Mapping[str, Any]) -> int:
    value = machine.get("units")
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 1


def _unknown_machine(entry: Mapping[str, Any]) -> dict[str, Any]:
    return {"machineId": entry.get("machine_id") or "", "name": entry.get("name") or "",
            "result": "succeed", "status": "unknown", "privateIpAddress": None,
            "launchtime": 0,
            "message": entry.get("message") or "unknown to the provider: nothing to return",
            "priceType": None, "instanceType": None, "instanceTags": "",
            "cloudHostId": None}


def _request_message(kind: str, status: str, results: list[str], asked: int,
                     expired: bool) -> str:
    if status != "complete_with_error":
        return ""
    ok = results.count("succeed")
    if kind == RETURN:
        return f"{asked - ok} of {asked} machine(s) not returned in time"
    if expired:
        return f"deadline passed: {ok} of {asked} machine(s) came up in time"
    return f"{ok} of {asked} machine(s) came up; the others failed"


def hf_unknown(request_id: str, now: float, grace_s: float,
               outcome: Mapping[str, Any] | None) -> dict[str, Any]:
    """An id with no request view: refused (with the reason), just sent (``running`` for
    at most ``grace_s`` after the time its id carries), or unknown (final, so HostFactory
    stops asking)."""
    if outcome is not None and outcome.get("outcome") == "rejected":
        return {"requestId": request_id, "status": "complete_with_error",
                "message": f"refused: {outcome.get('reason') or 'no reason recorded'}",
                "machines": []}
    issued = issued_at(request_id)
    if issued is not None and issued <= now + 60 and now - issued < grace_s:
        return {"requestId": request_id, "status": "running",
                "message": ACCEPTED_NOT_APPLIED, "machines": []}
    return {"requestId": request_id, "status": "complete_with_error",
            "message": UNKNOWN_REQUEST, "machines": []}


def grace_period(machine: Mapping[str, Any], now: float) -> int | None:
    """getReturnRequests: 0 for a machine gone or going, the seconds left before a reclaim
    notice takes it (never negative), None for a machine that stays."""
    if machine.get("status") in GONE_OR_GOING:
        return 0
    reclaim_at = machine.get("reclaim_at")
    if isinstance(reclaim_at, int | float) and not isinstance(reclaim_at, bool):
        return max(0, int(reclaim_at - now))
    return None


# --- time-ordered ids: a just-sent command's request is not "unknown" -------------------

def time_ordered_id(now: float | None = None) -> str:
    """A UUID version 7 (RFC 9562): 48 bits of milliseconds, the version, 12 random bits, the
    variant, 62 random bits; written out directly (a third of the time of ``uuid.UUID``, and
    every command the gateway accepts gets one)."""
    ms = (time.time_ns() // 1_000_000 if now is None else int(now * 1000)) & 0xFFFFFFFFFFFF
    rand = os.urandom(10).hex()  # 80 random bits; 74 are used
    head = f"{ms:012x}"
    return (f"{head[:8]}-{head[8:]}-7{rand[:3]}-{8 | (int(rand[3], 16) & 3):x}{rand[4:7]}-"
            f"{rand[7:19]}")


def issued_at(request_id: str) -> float | None:
    """When a ``req-``/``ret-`` id built on a version-7 UUID was made; None for other ids."""
    _, sep, rest = request_id.partition("-")
    if not sep:
        return None
    try:
        parsed = uuid.UUID(rest)
    except ValueError:
        return None
    if parsed.version != 7 or str(parsed) != rest.lower():
        return None
    return (parsed.int >> 80) / 1000.0
