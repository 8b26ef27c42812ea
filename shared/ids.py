"""Identifiers: the one rule every id follows, and the ids the contract derives.

Ids end up in Redis keys, SQL columns and URL paths: no spaces, no slashes, no control
characters, at most ``MAX_ID_LEN`` characters.
"""

from __future__ import annotations

import re
from typing import Final

MAX_ID_LEN: Final = 200
ID_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9._:@+=-]*$"
_ID_RE: Final = re.compile(ID_PATTERN)


def is_valid_id(value: object) -> bool:
    return isinstance(value, str) and len(value) <= MAX_ID_LEN and bool(_ID_RE.match(value))


def default_request_id(command_id: str) -> str:
    """The request a CreateRequest without ``request_id`` creates: known when it is sent."""
    return f"req-{command_id}"


def default_return_id(command_id: str) -> str:
    """The return request a ReturnMachines without ``request_id`` creates."""
    return f"ret-{command_id}"
