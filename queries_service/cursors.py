"""Opaque, stable page cursors. A cursor names the last item of a page; items added later
sort after it, so paging never skips or repeats one."""

from __future__ import annotations

import base64
import binascii
import re
from typing import Final

import orjson

from queries_service.parameters import BadParameter

_SCORE_RE: Final = re.compile(r"s[0-9]{1,18}")


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(cursor: str) -> bytes:
    return base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))


def _refuse() -> BadParameter:
    return BadParameter("cursor", "is not a cursor this service returned")


def encode_score(score: int) -> str:
    """A cursor into the requests index (scored by the store's creation sequence)."""
    return _b64(f"s{score}".encode())


def decode_score(cursor: str | None) -> int:
    if not cursor:
        return 0
    try:
        text = _unb64(cursor).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise _refuse() from None
    if not _SCORE_RE.fullmatch(text):
        raise _refuse()
    return int(text[1:])


def encode_machine(created_at: float, machine_id: str) -> str:
    """A cursor into a request's machines (ordered by first report, then id)."""
    return _b64(orjson.dumps([created_at, machine_id]))


def decode_machine(cursor: str | None) -> tuple[float, str]:
    if not cursor:
        return (float("-inf"), "")
    try:
        created_at, machine_id = orjson.loads(_unb64(cursor))
        return float(created_at), str(machine_id)
    except (binascii.Error, ValueError, TypeError):
        raise _refuse() from None
