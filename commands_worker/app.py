"""The name operators start the worker by: ``celery -A commands_worker.app worker``.

Before anything imports prometheus_client, the worker's metrics get a multiprocess directory
(``PROMETHEUS_MULTIPROC_DIR``, a fresh one unless set), so the pool processes it forks count
into files its metrics endpoint reads (``commands_worker/adapters/metrics.py``)."""

import os
import tempfile

if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="hf-worker-metrics-")

from commands_worker.entrypoints.celery_app import app

__all__ = ["app"]
