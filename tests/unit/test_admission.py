"""Admission of one message, whatever it holds: an item for the pool (maybe carrying its
refusal) or ``Unadmittable``, never any other exception."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from commands_worker.entrypoints.admission import Unadmittable, admit

CREATE = "commands.create_request"
GOOD = {"template_id": "x86-small", "max_number": 1}
NOW = 1_800_000_000.0


def body(kwargs: Any, args: Any = None) -> Any:
    return lambda: ([] if args is None else args, kwargs, {})


def headers(**extra: Any) -> dict[str, Any]:
    return {"task": CREATE, "id": "t1", **extra}


def test_a_good_message_is_admitted_as_it_came() -> None:
    item = admit(headers(), body(GOOD), "commands.requests", lambda: NOW)
    assert (item.command_id, item.task, item.kwargs, item.queue, item.refusal) == (
        "t1", CREATE, GOOD, "commands.requests", "")


def test_the_command_id_wins_over_the_task_id_and_a_bad_task_id_is_not_fatal() -> None:
    item = admit(headers(id="a bad id"), body({**GOOD, "command_id": "c1"}), None)
    assert item.command_id == "c1" and item.queue is None  # not a contract queue: not kept


@pytest.mark.parametrize(("extra", "kwargs", "args", "problem"), [
    ({}, [1, 2], None, "kwargs must be an object"),
    ({}, GOOD, {"a": 1}, "args must be a list"),
    ({}, GOOD, [1], "positional arguments"),
    ({"eta": "soon"}, GOOD, None, "eta must be an ISO-8601 date"),
    ({"eta": "9999-01-01T00:00:00+00:00"}, GOOD, None, "more than 3600 s ahead"),
    ({"expires": "2001-01-01T00:00:00+00:00"}, GOOD, None, "expired at"),
    ({"expires": 5}, GOOD, None, "expires must be an ISO-8601 date"),
])
def test_refusals_keep_the_id_so_the_outcome_can_say_why(extra: dict[str, Any], kwargs: Any,
                                                         args: Any, problem: str) -> None:
    item = admit(headers(**extra), body(kwargs, args), "commands.requests", lambda: NOW)
    assert item.command_id == "t1" and problem in item.refusal


def test_an_undecodable_body_is_refused_under_its_id() -> None:
    def broken() -> Any:
        raise ValueError("not base64")

    assert "undecodable body" in admit(headers(), broken, None).refusal


@pytest.mark.parametrize(("hdrs", "problem"), [
    ("x", "no message headers"),
    ({"task": "celery.group", "id": "t1"}, "unknown task 'celery.group'"),
    ({"task": ["x"], "id": "t1"}, "unknown task"),
    ({"task": CREATE}, "no usable command id"),
    ({"task": CREATE, "id": "nul\x00"}, "no usable command id"),
    ({"task": CREATE, "id": "x" * 201}, "no usable command id"),
])
def test_without_a_usable_id_or_task_it_can_only_be_parked(hdrs: Any, problem: str) -> None:
    with pytest.raises(Unadmittable, match=problem):
        admit(hdrs, body(GOOD), None)


_json = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                     lambda inner: st.lists(inner, max_size=3)
                     | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=6)


@given(st.one_of(_json, st.dictionaries(st.sampled_from(["task", "id", "eta", "expires",
                                                         "hf_waits"]), _json)),
       _json, _json)
def test_nothing_else_ever_escapes(hdrs: Any, decoded: Any, queue: Any) -> None:
    with contextlib.suppress(Unadmittable):
        admit(hdrs, lambda: decoded, queue, lambda: NOW)


def test_a_report_is_as_old_as_its_first_arrival_across_retries() -> None:
    """The arrival a retry carries is kept; one from the future, from over a day ago, or not a
    number is replaced by the time the worker takes the message."""
    from commands_worker.entrypoints.items import ARRIVED_HEADER, arrived_of

    now = 1_800_000_000.0
    assert arrived_of({ARRIVED_HEADER: now - 3.5}, now) == now - 3.5
    for forged in (now + 60, now - 2 * 86_400, "yesterday", True, None):
        assert arrived_of({ARRIVED_HEADER: forged}, now) == now
