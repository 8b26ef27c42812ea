"""Redis or the store unavailable for a few seconds while commands flow: once it is back,
every command has its outcome and nothing was applied twice."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import sqlalchemy as sa
from celery import Celery

from shared import keys
from tests.conftest import Proc, free_port, wait_for, worker_argv

CREATE = "commands.create_request"


def send_steadily(app: Celery, ids: list[str], stop_at: int) -> None:
    """A producer that retries its own publish while the broker is down."""
    for task_id in ids[:stop_at]:
        while True:
            try:
                app.send_task(CREATE, kwargs={"template_id": "x86-small", "max_number": 1},
                              task_id=task_id, queue="commands.requests", retry=False)
                break
            except Exception:
                time.sleep(0.2)
        time.sleep(0.01)


def all_outcomes(client: redis.Redis, ids: list[str]) -> dict[str, Any] | None:
    try:
        docs = client.mget([f"hf:v1:command:{i}" for i in ids])
    except redis.ConnectionError:
        return None
    if any(d is None for d in docs):
        return None
    return {i: json.loads(d or b"null") for i, d in zip(ids, docs, strict=True)}


def every_outcome(client: redis.Redis, ids: list[str], timeout_s: float) -> dict[str, Any]:
    """Wait for an outcome of every command; if some never come, say where things stand."""
    try:
        got: dict[str, Any] = wait_for(lambda: all_outcomes(client, ids), timeout_s, every_s=1,
                                       what="an outcome for every command")
        return got
    except AssertionError:
        missing = [i for i, d in zip(ids, client.mget([f"hf:v1:command:{i}" for i in ids]),
                                     strict=True) if d is None]
        raise AssertionError(
            f"{len(missing)} without outcome; queue {client.llen('commands.requests')}, "
            f"unacked {client.hlen('unacked')}, "
            f"inbox {client.llen('hf:v1:broker:dead-letter-inbox')}, "
            f"in flight {list(client.scan_iter('hf:v1:broker:inflight:*'))}, "
            f"first missing {missing[:3]}") from None


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[tuple[str, Any]]:
    """A private redis-server with an append-only file, which a test may stop and restart."""
    port = free_port()
    argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path),
            "--appendonly", "yes", "--appendfsync", "always", "--save", "",
            "--logfile", str(tmp_path / "redis.log")]
    procs: list[subprocess.Popen[bytes]] = []

    def start() -> None:
        procs.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL))
        client = redis.Redis(port=port)
        wait_for(lambda: _pings(client), 10, what="redis-server")

    def stop() -> None:
        procs[-1].terminate()
        procs[-1].wait(timeout=10)

    start()
    yield f"redis://127.0.0.1:{port}/0", (start, stop)
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=10)


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


def applied_so_far(client: redis.Redis, ids: list[str]) -> int:
    """How many of ``ids`` have an outcome already (the scenario is under way)."""
    docs: Any = client.mget([f"hf:v1:command:{i}" for i in ids])
    return sum(1 for d in docs if d)


def test_redis_restart_loses_nothing(start_worker: Any, own_redis: tuple[str, Any]) -> None:
    url, (start, stop) = own_redis
    start_worker(2, REDIS_URL=url)
    producer = Celery("outage-producer", broker=url, set_as_current=False)
    ids = [str(uuid.uuid4()) for _ in range(300)]
    sender = threading.Thread(target=send_steadily, args=(producer, ids, len(ids)))
    sender.start()
    client = redis.Redis.from_url(url)
    wait_for(lambda: applied_so_far(client, ids) >= 20, 30, what="commands to be applied")
    stop()
    time.sleep(3.0)  # Redis is away for three seconds
    start()
    sender.join(timeout=120)
    got = every_outcome(client, ids, 60)
    assert {o["outcome"] for o in got.values()} == {"applied"}
    for task_id in ids[::25]:
        view = json.loads(client.get(f"hf:v1:request:req-{task_id}") or b"{}")
        assert view["version"] == 1
    producer.close()


def test_store_outage_is_ridden_out(start_worker: Any, postgres_server: str,
                                    rclient: redis.Redis, producer: Celery) -> None:
    with _database(postgres_server, "hf_outage") as store:
        start_worker(2, STORE_URL=store.url, COMMAND_MAX_RETRIES="6")
        ids = [str(uuid.uuid4()) for _ in range(200)]
        sender = threading.Thread(target=send_steadily, args=(producer, ids, len(ids)))
        sender.start()
        wait_for(lambda: applied_so_far(rclient, ids) >= 20, 30, what="commands to be applied")
        store.refuse()  # the store goes away for four seconds
        time.sleep(4.0)
        store.allow()
        sender.join(timeout=60)
        got = wait_for(lambda: all_outcomes(rclient, ids), 120, every_s=1,
                       what="an outcome for every command")
        assert {o["outcome"] for o in got.values()} == {"applied"}
        engine = sa.create_engine(store.url)
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM requests")).scalar_one() == len(ids)
            assert conn.execute(sa.text("SELECT count(*) FROM dead_letters")).scalar_one() == 0
        engine.dispose()


def test_a_worker_started_before_its_store_waits_for_it(
        stack_env: dict[str, str], tmp_path: Path, postgres_server: str,
        rclient: redis.Redis, producer: Celery) -> None:
    """A host restarts and the worker comes up before its database (or during a failover):
    the worker waits for the store, says so, takes no command meanwhile, and applies what
    was sent once the store answers. It used to exit at once ("Unrecoverable error:
    StoreUnavailable"), which a bare ``celery worker`` or ``hfctl up`` never recovers from."""
    with _database(postgres_server, "hf_late") as store:
        store.refuse()
        worker = Proc(worker_argv(2), {**stack_env, "STORE_URL": store.url},
                      tmp_path / "worker.log").start()
        try:
            wait_for(lambda: "store_waiting" in worker.output(), 30, what="the worker to wait")
            ids = [str(uuid.uuid4()) for _ in range(5)]
            send_steadily(producer, ids, len(ids))
            time.sleep(1.0)
            assert worker.proc is not None and worker.proc.poll() is None, worker.output()
            assert rclient.llen("commands.requests") == len(ids)  # none taken, none refused
            other = Proc(worker_argv(1, "other"), {**stack_env, "STORE_URL": store.url},
                         tmp_path / "other.log").start()  # one stopped while it waits stops
            wait_for(lambda: "store_waiting" in other.output(), 30, what="the other to wait")
            assert other.proc is not None
            other.proc.send_signal(signal.SIGTERM)
            assert other.proc.wait(timeout=15) == 0, other.output()
            store.allow()
            got = wait_for(lambda: all_outcomes(rclient, ids), 60, every_s=0.2,
                           what="an outcome for every command")
            assert {o["outcome"] for o in got.values()} == {"applied"}
            assert worker.proc.poll() is None
        finally:
            worker.kill()


def test_a_pool_process_started_during_an_outage_retries_what_it_is_given(
        stack_env: dict[str, str], tmp_path: Path, postgres_server: str,
        rclient: redis.Redis, producer: Celery) -> None:
    """A pool process that dies during a store outage is replaced by one that cannot open the
    store. What it is given is retried as any command of a store outage is, with backoff:
    not handed back as a lost batch, whose quick hand-backs were counted as a poison
    message's and ended as dead letters within a second."""
    with _database(postgres_server, "hf_fork") as store:
        worker = Proc(worker_argv(1), {**stack_env, "STORE_URL": store.url},
                      tmp_path / "worker.log").start()
        try:
            wait_for(lambda: rclient.exists("hf:v1:templates"), 30, what="the worker to start")
            assert worker.proc is not None
            main = worker.proc.pid
            [pool_process] = _children(main)
            store.refuse()  # the store goes away, and the pool process dies
            os.kill(pool_process, signal.SIGKILL)
            wait_for(lambda: _children(main) not in ([], [pool_process]), 30,
                     what="a new pool process")
            ids = [str(uuid.uuid4()) for _ in range(3)]
            send_steadily(producer, ids, len(ids))
            time.sleep(3.0)
            assert rclient.llen(keys.DEAD_LETTER_INBOX_KEY) == 0, worker.output()
            store.allow()
            got = wait_for(lambda: all_outcomes(rclient, ids), 60, every_s=0.2,
                           what="an outcome for every command")
            assert {o["outcome"] for o in got.values()} == {"applied"}
            assert rclient.llen(keys.DEAD_LETTER_INBOX_KEY) == 0
        finally:
            worker.kill()


class _Database:
    """A PostgreSQL database of the test's own, which can stop answering and answer again."""

    def __init__(self, server: str, name: str) -> None:
        self.name = name
        self.url = server.rsplit("/", 1)[0] + "/" + name
        self.admin = sa.create_engine(server, isolation_level="AUTOCOMMIT")

    def run(self, *statements: str) -> None:
        with self.admin.connect() as conn:
            for statement in statements:
                conn.execute(sa.text(statement))

    def refuse(self) -> None:
        """No connection is let in, and those open are ended."""
        self.run(f"ALTER DATABASE {self.name} ALLOW_CONNECTIONS false",
                 "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                 f"WHERE datname = '{self.name}'")

    def allow(self) -> None:
        self.run(f"ALTER DATABASE {self.name} ALLOW_CONNECTIONS true")


@contextlib.contextmanager
def _database(server: str, name: str) -> Iterator[_Database]:
    database = _Database(server, name)
    database.run(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)", f"CREATE DATABASE {name}")
    try:
        yield database
    finally:
        database.run(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        database.admin.dispose()


def _children(pid: int) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True,
                           check=False).stdout
    return sorted(int(p) for p in found.split())


def test_a_full_redis_is_ridden_out(start_worker: Any, own_redis: tuple[str, Any]) -> None:
    """Redis at maxmemory with noeviction refuses every write (pops, leases, projections,
    retries) for a few seconds under load: the worker backs off, never exits, and once Redis
    has room again every command is applied once."""
    url, _ = own_redis
    worker = start_worker(2, REDIS_URL=url)
    client = redis.Redis.from_url(url)
    producer = Celery("full-redis-producer", broker=url, set_as_current=False)
    ids = [str(uuid.uuid4()) for _ in range(240)]
    sender = threading.Thread(target=send_steadily, args=(producer, ids, len(ids)))
    sender.start()
    time.sleep(0.8)
    used = int(client.info("memory")["used_memory"])
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", used + 4 * 2**20)
    filler = Filler(client)
    filler.fill()
    time.sleep(3.0)  # full for three seconds at least, and until the worker has met it (a
    # worker between writes, on a loaded machine, may not try one in three seconds; and
    # its acknowledgements free memory, so the filler tops Redis up meanwhile)
    wait_for(lambda: filler.fill() and "broker_refuses_writes" in worker.output(), 20,
             every_s=0.2, what="the worker to meet the full Redis")
    client.delete(*[f"filler:{n}" for n in range(filler.count)])
    client.config_set("maxmemory", 0)
    sender.join(timeout=120)
    got = every_outcome(client, ids, 90)
    assert {o["outcome"] for o in got.values()} == {"applied"}
    assert worker.proc is not None and worker.proc.poll() is None, worker.output()
    for task_id in ids:
        view = json.loads(client.get(f"hf:v1:request:req-{task_id}") or b"{}")
        assert view["version"] == 1
    assert "broker_refuses_writes" in worker.output()  # it said why it waited
    producer.close()


class Filler:
    """Fills Redis until even a tiny write is refused (a big one alone is refused sooner,
    while small ones still fit), and again whenever deletions made room."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.count = 0

    def fill(self) -> bool:
        for _ in range(20):
            for size in (2**20, 2**16, 2**10, 64, 1):
                while self.count < 200_000:
                    try:
                        self.client.set(f"filler:{self.count}", b"x" * size)
                    except redis.exceptions.OutOfMemoryError:
                        break
                    self.count += 1
            try:
                self.client.lpush("probe", b"x")
            except redis.exceptions.OutOfMemoryError:
                return True  # full: even a one-byte push is refused
            self.client.delete("probe")  # room was made meanwhile: fill again
        raise AssertionError("Redis never filled up")


def test_the_gateway_rides_out_a_broker_restart(own_redis: tuple[str, Any]) -> None:
    """The gateway holds its connection to the broker between round trips: while Redis is
    down a command is refused 503 (the client resends under the same id), and once Redis is
    back the next one is accepted on a new connection, without restarting the gateway."""
    from starlette.testclient import TestClient

    from commands_worker.gateway.app import create_app
    from shared.settings import Settings

    url, (start, stop) = own_redis
    body = {"template_id": "x86-small", "max_number": 1}
    with TestClient(create_app(Settings.from_env({"REDIS_URL": url}))) as gateway:
        assert gateway.post("/commands/create-request", json=body).status_code == 202
        stop()
        down = gateway.post("/commands/create-request", json=body,
                            headers={"Idempotency-Key": "while-down"})
        assert down.status_code == 503 and down.json()["command_id"] == "while-down"
        start()
        again = gateway.post("/commands/create-request", json=body,
                             headers={"Idempotency-Key": "while-down"})
        assert again.status_code == 202
    assert redis.Redis.from_url(url).llen("commands.requests") == 2
