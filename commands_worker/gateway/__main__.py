"""``python -m commands_worker.gateway``: one command gateway process (scale by running more
behind a load balancer; each is stateless)."""

from __future__ import annotations

import uvicorn

from shared.settings import Settings


def main() -> None:
    settings = Settings.from_env()
    uvicorn.run("commands_worker.gateway.app:create_app", factory=True,
                host=settings.gateway_host, port=settings.gateway_port,
                workers=settings.gateway_workers, log_level="warning", access_log=False,
                loop="uvloop", http="httptools")


if __name__ == "__main__":
    main()
