"""Admission: what the consumer checks of each message before it joins a batch.

Whatever a producer pushes onto a queue, this either admits a ``BatchItem`` (possibly one
carrying a refusal, which the pool records as the command's ``rejected`` outcome and dead
letter), or raises ``Unadmittable`` for a message with no id anyone could poll, which the
consumer parks whole in the dead-letter inbox. Nothing here raises anything else, and nothing
here does I/O: it is pure, so it is tested over generated messages.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Final

from commands_worker.entrypoints.items import BatchItem, arrived_of, budgets_of
from shared import instants, names
from shared.ids import is_valid_id

# A producer may delay a command a little (Celery's countdown); one held longer than this is
# refused rather than held for ever.
MAX_ETA_AHEAD_S: Final = 3600.0


class Unadmittable(Exception):
    """No command id can be read from the message: it can only be parked, raw, with this."""


def admit(headers: Any, decode: Callable[[], Any], queue: Any,
          now: Callable[[], float] = time.time) -> BatchItem:
    """The batch item for one message, or ``Unadmittable``."""
    if not isinstance(headers, dict):
        raise Unadmittable("no message headers: not a Celery protocol 2 task message")
    task = headers.get("task")
    if not isinstance(task, str) or task not in names.QUEUE_OF_TASK:
        raise Unadmittable(f"unknown task {_shown(task)}: only "
                           f"{', '.join(sorted(names.QUEUE_OF_TASK))} are accepted")
    try:
        body = decode()
    except Exception as exc:  # kombu raises what the body's bytes cause
        return _refused(headers, task, {}, queue, f"undecodable body: {_shown(exc)}")
    args, kwargs, problem = _arguments(body)
    eta, taken = 0.0, now()
    if problem is None:
        eta, problem = _timing(headers, taken)
    if problem:
        return _refused(headers, task, kwargs, queue, problem)
    return BatchItem(_command_id(headers, kwargs), task, args, kwargs, _queue(queue),
                     *budgets_of(headers), due_at=eta,
                     arrived_at=arrived_of(headers, taken))


def _refused(headers: dict[str, Any], task: str, kwargs: dict[str, Any], queue: Any,
             problem: str) -> BatchItem:
    return BatchItem(_command_id(headers, kwargs), task, [], kwargs, _queue(queue),
                     refusal=problem)


def _command_id(headers: dict[str, Any], kwargs: dict[str, Any]) -> str:
    """The id the command is known by: its ``command_id``, else the task id. Either must
    follow the id rule, or nobody could ever look the command up."""
    for candidate in (kwargs.get("command_id"), headers.get("id")):
        if is_valid_id(candidate):
            return str(candidate)
    raise Unadmittable(f"no usable command id: task id {_shown(headers.get('id'))} and "
                       f"command_id {_shown(kwargs.get('command_id'))} break the id rule")


def _arguments(body: Any) -> tuple[list[Any], dict[str, Any], str | None]:
    if not isinstance(body, list | tuple) or len(body) != 3:
        return [], {}, "body is not [args, kwargs, embed] (Celery message protocol 2)"
    args, kwargs, _ = body
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        return [], {}, f"kwargs must be an object, not {type(kwargs).__name__}"
    if not isinstance(args, list):
        return [], kwargs, f"args must be a list, not {type(args).__name__}"
    if args:
        return [], kwargs, "positional arguments are not accepted: send kwargs"
    return args, kwargs, None


def _timing(headers: dict[str, Any], now: float) -> tuple[float, str | None]:
    """When the message is due (0: now), or what is wrong with its eta or expires."""
    eta, eta_problem = _instant(headers.get("eta"), "eta")
    if eta_problem:
        return 0.0, eta_problem
    if eta is not None and eta > now + MAX_ETA_AHEAD_S:
        return 0.0, f"eta {headers['eta']!r} is more than {MAX_ETA_AHEAD_S:.0f} s ahead"
    expires, expires_problem = _instant(headers.get("expires"), "expires")
    if expires_problem:
        return 0.0, expires_problem
    if expires is not None and expires < now:
        return 0.0, f"expired at {headers['expires']!r}"
    return eta or 0.0, None


def _instant(value: Any, name: str) -> tuple[float | None, str | None]:
    """An ISO-8601 header as epoch seconds (a zone-less one is taken as UTC)."""
    if value is None:
        return None, None
    if not isinstance(value, str) or len(value) > 64:
        return None, f"{name} must be an ISO-8601 date, not {_shown(value)}"
    try:
        return instants.epoch(value), None
    except ValueError:
        return None, f"{name} must be an ISO-8601 date, not {_shown(value)}"


def _queue(queue: Any) -> str | None:
    return queue if queue in names.ALL_QUEUES else None


def _shown(value: Any, most: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= most else text[:most] + "…"
