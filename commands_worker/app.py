"""The name operators start the worker by: ``celery -A commands_worker.app worker``.

Before anything imports prometheus_client, the worker's metrics get a multiprocess directory
(``PROMETHEUS_MULTIPROC_DIR``, a fresh one unless set), so the pool processes it forks count
into files its metrics endpoint reads (``commands_worker/adapters/metrics.py``)."""

import atexit
import os
import shutil
import tempfile

if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    _made = os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="hf-worker-metrics-")
    _owner = os.getpid()

    def _remove() -> None:
        """When the worker's main process exits (not when a forked pool process does)."""
        if os.getpid() == _owner:
            shutil.rmtree(_made, ignore_errors=True)

    atexit.register(_remove)

from commands_worker.entrypoints.celery_app import app

__all__ = ["app"]
