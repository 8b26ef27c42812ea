"""What every benchmark of bench/ shares: free ports, a private redis-server, process
groups with their peak memory, a worker or the pair started on a fresh store, wrk against a
URL, a bare Starlette hello world of a given size. Imported by ``python -m bench`` and by
each ``bench.<name>`` module (so nothing is loaded twice)."""


from __future__ import annotations

import atexit
import json
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis
from celery import Celery

ROOT = Path(__file__).resolve().parent.parent
QUEUES = ("commands.requests", "commands.machines")
PG_ADMIN = os.environ.get("BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_until(predicate: Any, timeout_s: float, what: str, every_s: float = 0.02) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: timed out waiting for {what}")
        time.sleep(every_s)


@contextmanager
def redis_server(workdir: Path) -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                             "--save", "", "--appendonly", "no", "--dir", str(workdir)],
                            stdout=subprocess.DEVNULL)
    client = redis.Redis(port=port)
    wait_until(lambda: _ping(client), 10, "redis-server")
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait()


def _ping(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


class Group:
    """A process group started for the bench, with its peak memory. Each has a session of
    its own, so a bench that fails midway would leave it running (a worker, a query service
    and moto's endpoint were still running an hour later, beside other benches): what
    is still running when the bench's process exits is stopped then."""

    running: set[Group] = set()

    def __init__(self, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log.open("ab")
        self.proc = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        Group.running.add(self)

    def peak_rss_mb(self) -> float:
        """The largest peak RSS (VmHWM) of any process of the group."""
        peaks = []
        for pid in _group_pids(self.proc.pid):
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            match = re.search(r"VmHWM:\s+(\d+) kB", status)
            if match:
                peaks.append(int(match.group(1)) / 1024)
        return round(max(peaks, default=0.0), 1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.log.close()
        Group.running.discard(self)


@atexit.register
def _stop_what_is_left() -> None:
    for group in list(Group.running):
        group.stop()


def _group_pids(pgid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getpgid(int(entry.name)) == pgid:
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def worker_argv(app: str, concurrency: int, queues: str) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", app, "worker", "-Q", queues,
            "-c", str(concurrency), "--without-gossip", "--without-mingle",
            "--without-heartbeat", "-l", "warning"]


def drain_time(client: redis.Redis, queues: tuple[str, ...], total: int) -> float:
    """From the first message taken to the last one acknowledged."""
    wait_until(lambda: sum(client.llen(q) for q in queues) < total, 60, "the first pop",
               every_s=0.002)
    started = time.perf_counter()
    wait_until(lambda: sum(client.llen(q) for q in queues) == 0 and client.hlen("unacked") == 0,
               600, "the queue to drain", every_s=0.005)
    return time.perf_counter() - started


def fill(redis_url: str, messages: list[tuple[str, str, dict[str, Any]]]) -> None:
    producer = Celery("bench-producer", broker=redis_url, set_as_current=False)
    producer.conf.task_serializer = "json"
    with producer.connection_for_write() as conn, producer.producer_or_acquire() as pub:
        del conn
        for task, queue, kwargs in messages:
            producer.send_task(task, kwargs=kwargs, queue=queue, producer=pub)
    producer.close()


def stack_env(redis_url: str, store_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("REDIS_", "BROKER_", "CACHE_", "STORE_", "QUERY_"))}
    env.update({"REDIS_URL": redis_url, "STORE_URL": store_url, "PYTHONPATH": str(ROOT),
                "LOG_LEVEL": "WARNING",
                # The worker signs the feed; the providers of a run check it with this.
                "FEED_SIGNING_KEY": "bench-feed-signing-key-0123456789abcdef"})
    return env


def fresh_store(kind: str, workdir: Path) -> str:
    if kind == "sqlite":
        path = workdir / f"bench-{uuid.uuid4().hex[:8]}.sqlite3"
        return f"sqlite:///{path}"
    import sqlalchemy as sa

    admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text("DROP DATABASE IF EXISTS hf_bench WITH (FORCE)"))
        conn.execute(sa.text("CREATE DATABASE hf_bench"))
    admin.dispose()
    return PG_ADMIN.rsplit("/", 1)[0] + "/hf_bench"


def start_worker(env: dict[str, str], concurrency: int, log: Path,
                 client: redis.Redis) -> Group:
    group = Group(worker_argv("commands_worker.app", concurrency, ",".join(QUEUES)), env, log)
    wait_until(lambda: client.exists("hf:v1:templates"), 60, "the worker to start")
    return group


def _http_ok(url: str) -> bool:
    import httpx

    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def wrk(url: str, connections: int, duration_s: int,
        script: Path | None = None) -> dict[str, Any]:
    extra = ["-s", str(script)] if script else []
    out = subprocess.run(["wrk", "-t2", f"-c{connections}", f"-d{duration_s}s", "--latency",
                          *extra, url], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    latency = dict(re.findall(r"^\s+(50|99)%\s+([\d.]+\w+)", out, re.M))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    done = re.search(r"(\d+) requests in", out)
    return {"req_per_s": round(rps, 1), "requests": int(done.group(1)) if done else 0,
            "p50": latency.get("50"), "p99": latency.get("99"),
            "p50_ms": _ms(latency.get("50")), "p99_ms": _ms(latency.get("99")),
            "non_2xx": int(errors.group(1)) if errors else 0}


def bare_hello(env: dict[str, str], size: int, connections: int, duration_s: int,
               workdir: Path) -> dict[str, Any]:
    """The query-side baseline: bare Starlette (uvicorn, one worker, uvloop, httptools)
    answering a fixed body of ``size`` bytes, under the same wrk load."""
    port = free_port()
    bare = Group([sys.executable, "-m", "uvicorn", "bench.bare_starlette:app", "--port",
                  str(port), "--workers", "1", "--loop", "uvloop", "--http", "httptools",
                  "--log-level", "warning", "--no-access-log"],
                 {**env, "BODY_BYTES": str(size)}, workdir / "bare-starlette.log")
    wait_until(lambda: _http_ok(f"http://127.0.0.1:{port}/hello"), 30, "starlette")
    result = wrk(f"http://127.0.0.1:{port}/hello", connections, duration_s)
    result["body_bytes"] = size
    result["peak_rss_mb"] = bare.peak_rss_mb()
    bare.stop()
    return result


def post_script(workdir: Path, body: str) -> Path:
    """A wrk script that POSTs ``body`` as JSON."""
    script = workdir / "post.lua"
    script.write_text('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                      f"wrk.body = {json.dumps(body)}\n")
    return script


def _ms(text: str | None) -> float | None:
    if text is None:
        return None
    value, unit = re.match(r"([\d.]+)(\w+)", text).groups()  # type: ignore[union-attr]
    return round(float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit], 3)


def machine() -> dict[str, Any]:
    cpu = "unknown"
    with open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text())
                 .group(1))  # type: ignore[union-attr]
    redis_version = subprocess.run(["redis-server", "--version"], capture_output=True,
                                   text=True, check=False).stdout.split()[2]
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(mem_kb / 2**20, 1),
            "python": platform.python_version(), "redis": redis_version,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
