"""Instants as text: the one parser. ISO-8601 (``Z`` or an offset); a time without a zone is
UTC, never the host's local time (a worker's answer must not depend on where it runs).
Celery's own ``eta`` and ``expires`` are UTC when naive too (``enable_utc``, its default)."""

from __future__ import annotations

from datetime import UTC, datetime


class NoZone(ValueError):
    """A time without a zone where the contract asks for one."""


def epoch(text: str, zone_required: bool = False) -> float:
    """Epoch seconds of an ISO-8601 instant; raises ValueError (``NoZone`` when
    ``zone_required`` and the text has none)."""
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        if zone_required:
            raise NoZone("needs a time zone (e.g. 2026-01-01T00:00:00Z)")
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()
