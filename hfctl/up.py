"""``hfctl up``: the whole pair on one machine with the embedded defaults."""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from shared import names
from shared.settings import Settings

Started = list[tuple[str, "subprocess.Popen[bytes]"]]


def redis_answers(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except (redis.RedisError, OSError):
        return False


def start_redis(url: str, workdir: Path) -> subprocess.Popen[bytes]:
    parsed = urlparse(url)
    if parsed.hostname not in ("localhost", "127.0.0.1", "::1"):
        raise SystemExit(f"no Redis answers at {url}, and it is not local: start it first")
    workdir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        ["redis-server", "--bind", "127.0.0.1", "--port", str(parsed.port or 6379),
         "--dir", str(workdir), "--appendonly", "yes", "--appendfsync", "everysec",
         "--maxmemory-policy", "noeviction", "--save", ""],
        stdout=subprocess.DEVNULL)
    for _ in range(100):
        if redis_answers(url):
            return proc
        time.sleep(0.1)
    proc.terminate()
    raise SystemExit("redis-server did not start (is it installed?)")


def _spawn(what: str, argv: list[str]) -> tuple[str, subprocess.Popen[bytes]]:
    # Own process group: Ctrl-C reaches us once, and we stop the children in order.
    return what, subprocess.Popen(argv, start_new_session=True)


def _children(args: argparse.Namespace) -> list[tuple[str, list[str]]]:
    py = sys.executable
    children = [
        ("worker", [py, "-m", "celery", "-A", "commands_worker.app", "worker",
                    "-Q", ",".join(names.ALL_QUEUES), "-c", str(args.concurrency),
                    "--without-gossip", "--without-mingle", "--without-heartbeat",
                    "-l", "warning"]),
        ("queries", [py, "-m", "queries_service"]),
        ("gateway", [py, "-m", "commands_worker.gateway"]),
    ]
    if args.simulate:
        children.append(("simulator", [py, "-m", "hfctl", "simulate",
                                       "--failure-rate", str(args.failure_rate)]))
    return children


def feed_key_file(var: Path) -> Path:
    """The embedded pair's feed signing key (made once, readable by this user only): the
    worker signs provider-feed events with it and the simulator checks them."""
    path = var / "feed-signing.key"
    if not path.exists():
        var.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_hex(32) + "\n")
    return path


def cmd_up(args: argparse.Namespace) -> int:
    if not (os.environ.get("FEED_SIGNING_KEY") or os.environ.get("FEED_SIGNING_KEY_FILE")):
        os.environ["FEED_SIGNING_KEY_FILE"] = str(feed_key_file(Path("var")).resolve())
    settings = Settings.from_env()
    started: Started = []
    if not redis_answers(settings.redis_url):
        print(f"no Redis at {settings.redis_url}: starting redis-server (data in var/redis)")
        started.append(("redis", start_redis(settings.redis_url, Path("var/redis"))))
    started += [_spawn(what, argv) for what, argv in _children(args)]
    url = settings.query_url
    print(f"hostfactory-cqrs is up: store {settings.store_url}, cache {settings.cache_url}\n"
          f"  query service  {url}  (try {url}/templates)\n"
          f"  gateway        http://{settings.gateway_host}:{settings.gateway_port}"
          f"  (POST /commands/create-request)\n"
          f"  send           hfctl send create-request --template-id x86-small --max-number 2\n"
          f"  poll           hfctl status REQUEST_ID --wait\n"
          f"Ctrl-C stops everything started here.", flush=True)
    return supervise(started)


def supervise(started: Started) -> int:
    """Until Ctrl-C, SIGTERM or a child's exit; then stop every child, newest first."""
    stopping = False

    def stop(*_: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    code = 0
    while not stopping:
        for what, proc in started:
            if proc.poll() is not None:
                print(f"{what} exited with {proc.returncode}; stopping the rest", file=sys.stderr)
                stopping, code = True, 1
        time.sleep(0.2)
    _stop_all(started)
    return code


def _stop_all(started: Started) -> None:
    for _, proc in reversed(started):
        if proc.poll() is None:
            proc.terminate()
    for _, proc in reversed(started):
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
