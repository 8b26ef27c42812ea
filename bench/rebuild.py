"""python -m bench.rebuild [N]: how long ``hfctl rebuild-read-model`` takes for N requests
(two machines each, so 4 N documents and 3 N command outcomes) after the cache is wiped."""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import redis

from bench.common import redis_server, stack_env
from commands_worker import bootstrap
from commands_worker.service_layer.executor import Envelope
from commands_worker.service_layer.maintenance import rebuild_read_model
from shared.settings import Settings


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    with tempfile.TemporaryDirectory(prefix="hf-rebuild-") as tmp, \
            redis_server(Path(tmp)) as url:
        env = stack_env(url, f"sqlite:///{Path(tmp) / 'store.sqlite3'}")
        d = bootstrap.build(Settings.from_env(env))
        bootstrap.load_and_project_templates(d)
        started = time.perf_counter()
        for first in range(0, n, 200):
            envs = []
            for i in range(first, min(first + 200, n)):
                envs.append(Envelope("commands.create_request", f"c{i}",
                                     {"template_id": "x86-large", "max_number": 2}))
                envs += [Envelope("commands.update_machine_status", f"u{i}-{m}",
                                  {"machine_id": f"m{i}-{m}", "status": "running",
                                   "request_id": f"req-c{i}"}) for m in range(2)]
            d.executor.execute_batch(envs)
        print(f"stored {n} requests in {time.perf_counter() - started:.1f} s")
        redis.Redis.from_url(url).flushdb()
        result = rebuild_read_model(d.store, d.projector, d.settings.command_retention_s)
        print(f"rebuild of {n} requests: {result}")


if __name__ == "__main__":
    main()
