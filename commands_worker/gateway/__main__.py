"""``python -m commands_worker.gateway``: one command gateway process (scale by running more
behind a load balancer; each is stateless).

On granian's RSGI interface (a third less CPU a request than its ASGI one, measured): its
HTTP/1 parser bounds a request's head to ``MAX_HEAD_BYTES`` (431) and closes a connection
whose head is not complete within ``HEAD_READ_TIMEOUT_S``; a body that does not arrive in time
is answered 408 by the app."""

from __future__ import annotations

from granian import Granian
from granian.constants import Interfaces, Loops
from granian.http import HTTP1Settings
from granian.log import LogLevels

from shared.asgi import HEAD_READ_TIMEOUT_S, MAX_HEAD_BYTES
from shared.settings import Settings


def main() -> None:
    settings = Settings.from_env()
    Granian("commands_worker.gateway.app:create_app", factory=True,
            address=settings.gateway_host, port=settings.gateway_port,
            interface=Interfaces.RSGI, workers=settings.gateway_workers, loop=Loops.uvloop,
            runtime_threads=1, websockets=False, backlog=4096,
            http1_settings=HTTP1Settings(max_buffer_size=MAX_HEAD_BYTES,
                                         header_read_timeout=int(HEAD_READ_TIMEOUT_S * 1000)),
            log_level=LogLevels.warning, log_access=False).serve()


if __name__ == "__main__":
    main()
