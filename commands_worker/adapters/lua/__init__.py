"""The Lua scripts the adapters run in Redis, kept as ``.lua`` files beside this module.

Every script is sent with a ``#!lua`` shebang (Redis 7 script flags, none set): Redis then
knows it writes and refuses it whole, before it runs, when memory is full (``maxmemory``
with ``noeviction``). Without flags a script would fail midway, after its first write:
a pop without its record, a message lost.
"""

from __future__ import annotations

from functools import cache
from importlib import resources


@cache
def source(*names: str) -> str:
    """The named scripts, joined in order (a shared helper first, then the script)."""
    folder = resources.files(__name__)
    return "\n".join(["#!lua", *(folder.joinpath(name).read_text() for name in names)])
