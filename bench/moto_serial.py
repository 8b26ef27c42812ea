"""python -m bench.moto_serial HOST PORT: moto's EC2 endpoint serving one call at a time.

moto's own server (``python -m moto.server``) is threaded, and its subnets hand out addresses
from a generator that concurrent RunInstances in one subnet break ("generator already
executing": a 500 with an HTML body, seen in bench runs with the provider's eight EC2 threads).
Real EC2 takes concurrent launches; moto serves one call at a time anyway (the GIL), so the
bench serves it so, for the bare baseline and the provider alike."""

from __future__ import annotations

import sys

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from moto.server import MotoRequestHandler
from werkzeug.serving import run_simple


def main() -> None:
    host, port = sys.argv[1], int(sys.argv[2])
    run_simple(host, port, DomainDispatcherApplication(create_backend_app), threaded=False,
               request_handler=MotoRequestHandler)


if __name__ == "__main__":
    main()
