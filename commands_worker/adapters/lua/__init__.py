"""The Lua scripts the adapters run in Redis, kept as ``.lua`` files beside this module."""

from __future__ import annotations

from functools import cache
from importlib import resources


@cache
def source(*names: str) -> str:
    """The named scripts, joined in order (a shared helper first, then the script)."""
    folder = resources.files(__name__)
    return "\n".join(folder.joinpath(name).read_text() for name in names)
