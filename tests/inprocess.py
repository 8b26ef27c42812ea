"""The worker's side applied in the test's own process: commands through the real executor
over the in-memory store, their documents projected into a real Redis by the real projector.
For tests about what the read side and the feed make of the worker's output."""

from __future__ import annotations

import itertools
import time
from typing import Any

import redis

from commands_worker.adapters.projector import Projector
from commands_worker.service_layer.executor import Envelope, Executor
from commands_worker.service_layer.ports import ViewDoc
from tests.fakes import FakeState, FakeUnitOfWork, templates


class InProcessWorker:
    def __init__(self, client: redis.Redis, timeout_s: float = 600.0) -> None:
        self.state = FakeState.with_templates(templates(small=3))
        self.now = time.time()
        self.executor = Executor(lambda: FakeUnitOfWork(self.state), retention_s=600,
                                 clock=lambda: self.now, deadlines=(timeout_s, timeout_s))
        self.projector = Projector(client)
        self.ids = itertools.count()
        self.docs: list[ViewDoc] = []  # everything projected, to project again

    def send(self, task: str, **kwargs: Any) -> str:
        """``task`` without its ``commands.`` prefix, or ``deadline`` (the worker's own)."""
        internal = task == "deadline"
        done = self.executor.execute(Envelope(task if internal else f"commands.{task}",
                                              f"c{next(self.ids)}", kwargs, internal=internal))
        self.docs += done.docs
        self.projector.project(done.docs)
        return done.record.outcome

    def report(self, machine_id: str, status: str, request_id: str | None = None,
               **metadata: Any) -> None:
        assert self.send("update_machine_status", machine_id=machine_id, status=status,
                         request_id=request_id, metadata=metadata or None,
                         observed_at=self.now) == "applied"
