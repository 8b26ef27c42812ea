"""Fixtures for real servers and real processes.

Redis and PostgreSQL are the machine's own (``TEST_REDIS_URL``, ``TEST_POSTGRES_URL``). Locally
a missing server skips the tests that need it; under CI (``CI`` set) it fails them. RabbitMQ is
a private three-node cluster the session starts (``tests/rabbit.py``), never the machine's own
node: a test runs on it by asking for ``broker_kind`` "rabbitmq" (``indirect``
parametrization); every other test's broker is Redis.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import sqlalchemy as sa

from commands_worker.adapters.templates_file import EXAMPLE_TEMPLATES
from shared import keys
from shared.redis_urls import sync_client
from tests import rabbit
from tests.rabbit import RabbitCluster

TEST_REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/9")
TEST_POSTGRES_URL = os.environ.get("TEST_POSTGRES_URL",
                                   "postgresql+psycopg://postgres@127.0.0.1:5432/test")
ROOT = Path(__file__).resolve().parent.parent
# The worker signs provider-feed events with it; the providers of the tests check them.
TEST_FEED_KEY = "test-feed-signing-key-0123456789abcdef0123456789"


def unavailable(what: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{what} is required under CI and is not reachable")
    pytest.skip(f"{what} is not reachable")


def wait_for(predicate: Callable[[], Any], timeout_s: float = 20.0, every_s: float = 0.05,
             what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(every_s)


def http_ok(url: str) -> bool:
    """Whether ``url`` answers 200 now (a service come up, or still up)."""
    import httpx

    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


_GIVEN_PORTS: set[int] = set()


def free_port() -> int:
    """A port nothing listens on now, never one handed out before in this run: the kernel
    may give a just-closed port again, and two services of one test would then collide."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port: int = s.getsockname()[1]
        if port not in _GIVEN_PORTS:
            _GIVEN_PORTS.add(port)
            return port


@pytest.fixture(scope="session")
def redis_server() -> str:
    try:
        redis.Redis.from_url(TEST_REDIS_URL, socket_connect_timeout=1).ping()
    except (redis.RedisError, OSError):
        unavailable(f"Redis at {TEST_REDIS_URL}")
    return TEST_REDIS_URL


@pytest.fixture
def redis_url(redis_server: str) -> Iterator[str]:
    client = redis.Redis.from_url(redis_server)
    client.flushdb()
    yield redis_server
    client.flushdb()
    client.close()


@pytest.fixture
def rclient(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture(scope="session")
def postgres_server() -> str:
    try:
        engine = sa.create_engine(TEST_POSTGRES_URL)
        with engine.connect():
            pass
        engine.dispose()
    except Exception:
        unavailable(f"PostgreSQL at {TEST_POSTGRES_URL}")
    return TEST_POSTGRES_URL


@pytest.fixture
def postgres_url(postgres_server: str) -> str:
    from commands_worker.adapters.sql.tables import metadata

    engine = sa.create_engine(postgres_server)
    metadata.drop_all(engine)
    engine.dispose()
    return postgres_server


@pytest.fixture
def templates_file(tmp_path: Path) -> Path:
    path = tmp_path / "templates.json"
    shutil.copy(EXAMPLE_TEMPLATES, path)
    return path


@pytest.fixture(scope="session")
def rabbit_cluster() -> Iterator[RabbitCluster]:
    if not rabbit.available():
        unavailable("rabbitmq-server (Debian's package)")
    cluster = RabbitCluster(3).start()
    yield cluster
    cluster.stop()


@pytest.fixture
def broker_kind(request: pytest.FixtureRequest) -> str:
    """The broker a test runs on: "redis" unless the test asks for "rabbitmq"."""
    kind = str(getattr(request, "param", "redis"))
    assert kind in ("redis", "rabbitmq"), kind
    return kind


@pytest.fixture
def broker_url(request: pytest.FixtureRequest, broker_kind: str, redis_url: str) -> str:
    """BROKER_URL of the test: the Redis of the test, or the RabbitMQ cluster as Celery's
    failover list (its command queues emptied first)."""
    if broker_kind == "redis":
        return redis_url
    cluster: RabbitCluster = request.getfixturevalue("rabbit_cluster")
    wait_for(lambda: len(cluster.running()) == len(cluster.nodes), 120,
             what="every RabbitMQ node")
    cluster.purge()
    return cluster.url


@pytest.fixture
def stack_env(tmp_path: Path, redis_url: str, broker_url: str,
              templates_file: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("REDIS_", "BROKER_", "CACHE_", "STORE_", "QUERY_", "FEED_"))}
    env.update({
        "REDIS_URL": redis_url,
        "STORE_URL": f"sqlite:///{tmp_path / 'store.sqlite3'}",
        "TEMPLATES_FILE": str(templates_file),
        "BROKER_VISIBILITY_TIMEOUT_S": "4",
        "COMMAND_MAX_RETRIES": "3",
        "WORKER_METRICS_PORT": "0",  # a test that reads them gives its worker a free port
        "FEED_SIGNING_KEY": TEST_FEED_KEY,
        "PYTHONPATH": str(ROOT),
    })
    if broker_url != redis_url:  # on Redis, BROKER_URL follows REDIS_URL (a test may move it)
        env["BROKER_URL"] = broker_url
    return env


class Proc:
    """A child process group we can stop gently or kill hard."""

    def __init__(self, argv: list[str], env: dict[str, str], log: Path,
                 cwd: Path = ROOT) -> None:
        self.argv, self.env, self.log, self.cwd = argv, env, log, cwd
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self.argv, env=self.env, stdout=out,
                                         stderr=subprocess.STDOUT, cwd=self.cwd,
                                         start_new_session=True)
        return self

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.kill()

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def worker_argv(concurrency: int = 2, name: str = "worker") -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "commands_worker.app", "worker",
            "-n", f"{name}@%h", "-Q", "commands.requests,commands.machines",
            "-c", str(concurrency),
            "--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "warning"]


@pytest.fixture
def start_worker(stack_env: dict[str, str], tmp_path: Path,
                 redis_url: str) -> Iterator[Callable[..., Proc]]:
    started: list[Proc] = []

    def start(concurrency: int = 2, **env: str) -> Proc:
        proc = Proc(worker_argv(concurrency, f"worker{len(started)}"), {**stack_env, **env},
                    tmp_path / f"worker-{len(started)}.log").start()
        started.append(proc)
        client = sync_client(env.get("CACHE_URL") or env.get("REDIS_URL", redis_url))
        popen = proc.proc
        assert popen is not None
        wait_for(lambda: client.exists(keys.TEMPLATES_KEY) or popen.poll() is not None,
                 30, what="the worker to start")
        client.close()
        assert proc.proc is not None and proc.proc.poll() is None, proc.output()
        return proc

    yield start
    # The test is over: killed, not stopped (a warm shutdown waits a second for the pool's
    # threads, times every worker of the suite). Tests of shutdown stop their workers
    # themselves; what a killed worker held is flushed with the test's database.
    for proc in started:
        proc.kill()


@pytest.fixture
def worker(start_worker: Callable[..., Proc]) -> Proc:
    return start_worker()


@pytest.fixture
def query_url(stack_env: dict[str, str], tmp_path: Path) -> Iterator[str]:

    port = free_port()
    proc = Proc([sys.executable, "-m", "queries_service"],
                {**stack_env, "QUERY_PORT": str(port)}, tmp_path / "queries.log").start()
    url = f"http://127.0.0.1:{port}"

    wait_for(lambda: http_ok(f"{url}/healthz"), 20, what="the query service")
    yield url
    proc.stop()


@pytest.fixture
def producer(broker_url: str) -> Iterator[Any]:
    """A plain Celery app that knows nothing of this project: tasks are sent by name. On
    RabbitMQ it is configured as docs/rabbitmq.md tells a third party: queues it creates are
    quorum queues, and each send waits for the broker's confirm."""
    from celery import Celery

    app = Celery("outside-producer", broker=broker_url, set_as_current=False)
    app.conf.task_serializer = "json"
    if broker_url.startswith("amqp"):
        app.conf.task_create_missing_queue_type = "quorum"
        app.conf.broker_transport_options = {"confirm_publish": True}
    yield app
    app.close()


@pytest.fixture
def raw_push(broker_url: str) -> Iterator[Callable[[str, dict[str, Any] | bytes], None]]:
    """Push a raw message, as a buggy or hostile producer could, onto a command queue: a kombu
    Redis envelope (tests/messages.py) or bare bytes. On RabbitMQ the envelope's body, content
    type and headers are published as they are (what AMQP can carry of them)."""
    if not broker_url.startswith("amqp"):
        client = redis.Redis.from_url(broker_url)

        def push_redis(queue: str, message: dict[str, Any] | bytes) -> None:
            client.lpush(queue, message if isinstance(message, bytes)
                         else json.dumps(message))

        yield push_redis
        client.close()
        return
    from kombu import Connection

    from tests.messages import amqp_parts

    with Connection(broker_url, transport_options={"confirm_publish": True}) as connection:
        producer = connection.Producer()

        def push_amqp(queue: str, message: dict[str, Any] | bytes) -> None:
            body, headers, content_type, encoding, marker = amqp_parts(message)
            producer.publish(body, exchange=queue, routing_key=queue, headers=headers,
                             content_type=content_type, content_encoding=encoding,
                             correlation_id=marker, delivery_mode=2, retry=True)

        yield push_amqp
