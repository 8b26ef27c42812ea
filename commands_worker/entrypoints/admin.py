"""The worker's operator interface: what ``hfctl`` asks of the command side beyond sending
commands. These reach the store, so they run here, on the command side, never in the query
service; ``hfctl`` calls nothing else of this package."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

from commands_worker import bootstrap
from commands_worker.adapters.broker import dead_letter_inbox
from commands_worker.adapters.broker.replay import replay
from commands_worker.adapters.templates_file import TemplatesFileError, load_templates_file
from commands_worker.service_layer import maintenance
from commands_worker.service_layer.ports import DeadLetter


def rebuild_read_model() -> dict[str, Any]:
    """Re-project every template, request, machine and retained outcome from the store."""
    d = bootstrap.deps()
    return maintenance.rebuild_read_model(d.store, d.projector, d.settings.command_retention_s)


def dead_letters(include_replayed: bool = False) -> list[DeadLetter]:
    """Every open dead letter (and replayed ones), after moving parked ones into the store."""
    d = bootstrap.deps()
    dead_letter_inbox.drain(d.inbox, partial(maintenance.file_dead_letter, d.executor,
                                              d.projector))
    return d.store.dead_letters(state=None if include_replayed else "open")


def template_problems(path: Path) -> tuple[int, list[str]]:
    """How many templates of ``path`` are usable, and every problem with the others (or with
    the file as a whole, when none is usable)."""
    try:
        loaded = load_templates_file(path)
    except TemplatesFileError as exc:
        return 0, exc.problems
    return len(loaded.templates), loaded.problems()


def replay_dead_letter(letter_id: int) -> str:
    """Send a dead letter through again under its own command id; raises LookupError."""
    d = bootstrap.deps()
    letter = d.store.begin_replay(letter_id)
    if letter is None:
        raise LookupError(f"no dead letter {letter_id}")
    return replay(letter, d.settings.broker_url, d.inbox)
