"""A batch whose size is the data's, not an outage: 26 returns of 10,000 machines each, taken
together by a real worker on SQLite, are all applied; none is retried as if the store were
down, none is dead-lettered (SQLite refuses a statement with too many variables: the worker
chunks its keyed reads)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.conftest import Proc, free_port, wait_for

pytestmark = [pytest.mark.redis, pytest.mark.worker]
RETURNS, MACHINES = 26, 10_000


def test_26_returns_of_10000_machines_in_one_batch(producer: Any,
                                                   start_worker: Callable[..., Proc],
                                                   rclient: Any) -> None:
    for n in range(RETURNS):
        producer.send_task("commands.return_machines", queue="commands.requests",
                           task_id=f"big-{n}", kwargs={"machines": [
                               {"name": f"h{n}-{m}.example", "machine_id": f"i-{n}-{m}"}
                               for m in range(MACHINES)]})
    port = free_port()
    worker = start_worker(1, WORKER_METRICS_PORT=str(port))

    def outcomes() -> list[Any]:
        docs = [rclient.get(f"hf:v1:command:big-{n}") for n in range(RETURNS)]
        return docs if all(docs) else []

    done = wait_for(outcomes, 120, every_s=0.5, what="every return to be recorded")
    assert all(b'"outcome":"applied"' in d for d in done), [d[:200] for d in done]
    metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=60).text
    assert "hf_worker_store_retries_total 0.0" in metrics or \
        "hf_worker_store_retries_total" not in metrics
    assert "too many SQL variables" not in worker.output()
    assert "hf_worker_dead_letters_open 0.0" in metrics
