"""Page cursors: opaque, round-trip exactly, and refuse anything this service did not make."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from queries_service import cursors
from queries_service.parameters import BadParameter


@given(st.integers(0, 10**18 - 1))
def test_score_cursors_round_trip(score: int) -> None:
    assert cursors.decode_score(cursors.encode_score(score)) == score


@given(st.floats(0, 1e10, allow_nan=False), st.text(min_size=1, max_size=200))
def test_machine_cursors_round_trip(created_at: float, machine_id: str) -> None:
    cursor = cursors.encode_machine(created_at, machine_id)
    assert cursors.decode_machine(cursor) == (created_at, machine_id)


def test_no_cursor_starts_at_the_beginning() -> None:
    assert cursors.decode_score(None) == 0 and cursors.decode_score("") == 0
    assert cursors.decode_machine(None) == (float("-inf"), "")


@pytest.mark.parametrize("cursor", ["%%%", cursors.encode_machine(1.0, "m"),
                                    "cy0x", "c" * 64])
def test_a_foreign_cursor_is_a_bad_parameter(cursor: str) -> None:
    with pytest.raises(BadParameter) as caught:
        cursors.decode_score(cursor)
    assert caught.value.name == "cursor"


@pytest.mark.parametrize("cursor", ["%%%", cursors.encode_score(5), "W10", "bnVsbA"])
def test_a_foreign_machine_cursor_is_a_bad_parameter(cursor: str) -> None:
    with pytest.raises(BadParameter):
        cursors.decode_machine(cursor)
