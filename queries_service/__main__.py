"""``python -m queries_service``: one query service replica."""

from __future__ import annotations

import uvicorn

from shared.settings import Settings


def main() -> None:
    settings = Settings.from_env()
    uvicorn.run("queries_service.asgi:app", host=settings.query_host, port=settings.query_port,
                workers=settings.query_workers, log_level="warning", access_log=False,
                lifespan="on", loop="uvloop",
                http="queries_service.http:BoundedHttpToolsProtocol", backlog=4096)


if __name__ == "__main__":
    main()
