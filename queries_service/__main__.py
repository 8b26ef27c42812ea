"""``python -m queries_service``: one query service replica."""

from __future__ import annotations

import os
import shutil
import tempfile

import uvicorn

from shared.settings import Settings


def main() -> None:
    settings = Settings.from_env()
    made = None
    if settings.query_workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # The server's processes count into shared files: /metrics is whole for the host.
        made = os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="hf-query-metrics-")
    try:
        _serve(settings)
    finally:
        if made:
            shutil.rmtree(made, ignore_errors=True)


def _serve(settings: Settings) -> None:
    uvicorn.run("queries_service.asgi:app", host=settings.query_host, port=settings.query_port,
                workers=settings.query_workers, log_level="warning", access_log=False,
                lifespan="on", loop="uvloop",
                http="queries_service.http:BoundedHttpToolsProtocol", backlog=4096)


if __name__ == "__main__":
    main()
