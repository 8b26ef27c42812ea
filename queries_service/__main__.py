"""``python -m queries_service``: one query service replica."""

from __future__ import annotations

import os
import shutil
import tempfile

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
    if settings.query_server == "granian":
        _serve_granian(settings)
        return
    import uvicorn

    uvicorn.run("queries_service.asgi:app", host=settings.query_host, port=settings.query_port,
                workers=settings.query_workers, log_level="warning", access_log=False,
                lifespan="on", loop="uvloop",
                http="queries_service.http:BoundedHttpToolsProtocol", backlog=4096)


def _serve_granian(settings: Settings) -> None:
    """Granian (a Rust HTTP server, hyper) on its RSGI interface (``queries_service.rsgi``:
    kept views answered there, the rest bridged to the ASGI app). Its HTTP/1 parser bounds a
    request's head to ``MAX_HEAD_BYTES`` (431), and answers an unparseable request 400, both
    without a body."""
    from granian import Granian
    from granian.constants import Interfaces, Loops
    from granian.http import HTTP1Settings
    from granian.log import LogLevels

    from shared.asgi import HEAD_READ_TIMEOUT_S, MAX_HEAD_BYTES

    Granian("queries_service.asgi:app", address=settings.query_host, port=settings.query_port,
            interface=Interfaces.RSGI, workers=settings.query_workers, loop=Loops.uvloop,
            runtime_threads=1, blocking_threads=1, websockets=False, backlog=4096,
            http1_settings=HTTP1Settings(max_buffer_size=MAX_HEAD_BYTES,
                                         header_read_timeout=int(HEAD_READ_TIMEOUT_S * 1000)),
            log_level=LogLevels.warning, log_access=False).serve()


if __name__ == "__main__":
    main()
