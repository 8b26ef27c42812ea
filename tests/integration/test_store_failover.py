"""The write store fails over and loses nothing: two PostgreSQL 15 servers started here from
Debian's binaries, a primary and a synchronous standby (``pg_basebackup -R``,
``synchronous_standby_names``); the worker's ``STORE_URL`` names both with
``target_session_attrs=read-write``. While commands stream, the primary is killed -9 and the
standby promoted: every command is applied exactly once, every request at its right version,
nothing dead-lettered, and the worker's log and metrics say what happened."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.conftest import Proc, free_port, unavailable, wait_for

BIN = Path("/usr/lib/postgresql/15/bin")


def _as_postgres(*argv: str, timeout: float = 120) -> str:
    done = subprocess.run(["runuser", "-u", "postgres", "--", *argv], capture_output=True,
                          text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


class Server:
    def __init__(self, root: Path, name: str) -> None:
        self.data = root / name
        self.port = free_port()

    def start(self) -> None:
        _as_postgres(str(BIN / "pg_ctl"), "-D", str(self.data), "-l",
                     str(self.data.parent / f"{self.data.name}.log"), "-w", "-t", "60", "start")

    def pid(self) -> int:
        return int((self.data / "postmaster.pid").read_text().split()[0])

    def kill(self) -> None:
        """SIGKILL to the postmaster and every backend: no shutdown checkpoint, no goodbye."""
        pid = self.pid()
        subprocess.run(["pkill", "-9", "-P", str(pid)], check=False)
        os.kill(pid, signal.SIGKILL)

    def promote(self) -> None:
        """Promote, and (as Patroni does when the last standby is gone, outside its strict
        mode) stop waiting for a synchronous standby: the copied setting would otherwise hold
        every commit of the new primary for a standby that does not exist."""
        _as_postgres(str(BIN / "pg_ctl"), "-D", str(self.data), "-w", "promote")
        self.sql("ALTER SYSTEM SET synchronous_standby_names = ''")
        self.sql("SELECT pg_reload_conf()")

    def stop(self) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", str(BIN / "pg_ctl"), "-D",
                        str(self.data), "-m", "immediate", "stop"], capture_output=True,
                       timeout=60, check=False)

    def sql(self, query: str) -> str:
        return _as_postgres(str(BIN / "psql"), "-h", "127.0.0.1", "-p", str(self.port),
                            "-U", "postgres", "-At", "-c", query).strip()


@pytest.fixture
def pg_pair() -> Iterator[tuple[Server, Server]]:
    if not (BIN / "initdb").exists() or shutil.which("runuser") is None:
        unavailable("PostgreSQL 15's server binaries (Debian's postgresql-15)")
    root = Path(tempfile.mkdtemp(prefix="hfcqrs-pg-"))
    root.chmod(0o755)
    shutil.chown(root, "postgres", "postgres")
    primary, standby = Server(root, "primary"), Server(root, "standby")
    try:
        _as_postgres(str(BIN / "initdb"), "-D", str(primary.data), "-U", "postgres",
                     "--auth=trust", "-E", "UTF8")
        with (primary.data / "postgresql.conf").open("a") as conf:
            conf.write(f"port = {primary.port}\nlisten_addresses = '127.0.0.1'\n"
                       "unix_socket_directories = ''\nwal_level = replica\n"
                       "max_wal_senders = 5\nsynchronous_standby_names = 'standby1'\n"
                       "synchronous_commit = on\nfsync = on\n")
        with (primary.data / "pg_hba.conf").open("a") as hba:
            hba.write("host replication postgres 127.0.0.1/32 trust\n")
        primary.start()
        _as_postgres(str(BIN / "pg_basebackup"), "-h", "127.0.0.1", "-p", str(primary.port),
                     "-U", "postgres", "-D", str(standby.data), "-R", "-X", "stream")
        with (standby.data / "postgresql.auto.conf").open("a") as conf:
            conf.write(f"port = {standby.port}\nprimary_conninfo = 'host=127.0.0.1 "
                       f"port={primary.port} user=postgres application_name=standby1'\n")
        standby.start()
        wait_for(lambda: primary.sql("SELECT sync_state FROM pg_stat_replication") == "sync",
                 30, what="the standby to be synchronous")
        yield primary, standby
    finally:
        primary.stop()
        standby.stop()
        shutil.rmtree(root, ignore_errors=True)


def _send(producer: Any, ids: list[str], reported: list[str],
          stop: threading.Event) -> None:
    """CreateRequest for 2 machines, and for every third request (one sent a moment ago) a
    running report of each of its two machines."""
    while not stop.is_set():
        command_id = str(uuid.uuid4())
        producer.send_task("commands.create_request", task_id=command_id,
                           queue="commands.requests",
                           kwargs={"template_id": "x86-small", "max_number": 2})
        ids.append(command_id)
        if len(ids) % 3 == 0:
            earlier = ids[-3]
            for m in range(2):
                producer.send_task(
                    "commands.update_machine_status", queue="commands.machines",
                    task_id=f"{earlier}-m{m}",
                    kwargs={"machine_id": f"{earlier}-m{m}", "status": "running",
                            "request_id": f"req-{earlier}"})
            reported.append(earlier)
        time.sleep(0.01)


def test_a_primary_killed_mid_stream_loses_nothing(
        pg_pair: tuple[Server, Server], start_worker: Callable[..., Proc],
        stack_env: dict[str, str], rclient: redis.Redis, producer: Any) -> None:
    primary, standby = pg_pair
    metrics_port = free_port()
    url = (f"postgresql+psycopg://postgres@/postgres?host=127.0.0.1:{primary.port}"
           f"&host=127.0.0.1:{standby.port}&target_session_attrs=read-write"
           "&connect_timeout=3")
    worker = start_worker(STORE_URL=url, WORKER_METRICS_PORT=str(metrics_port))
    ids: list[str] = []
    reported: list[str] = []
    stop = threading.Event()
    sender = threading.Thread(target=_send, args=(producer, ids, reported, stop))
    sender.start()
    wait_for(lambda: len(ids) > 150, 60, what="a stream under way")
    primary.kill()
    killed = time.monotonic()
    time.sleep(1.0)  # what an operator (or Patroni) takes to decide
    standby.promote()
    wait_for(lambda: len(ids) > 400, 60, what="more commands after the failover")
    stop.set()
    sender.join(30)

    commands = ids + [f"{i}-m{m}" for i in reported for m in range(2)]
    outcomes = wait_for(lambda: (o := _outcomes(rclient, commands)) and
                        len(o) == len(commands) and o, 120, every_s=0.5,
                        what="an outcome for every command")
    assert {o["outcome"] for o in outcomes.values()} == {"applied"}
    print(f"\nprimary killed -9, the standby promoted 1 s later: {len(commands)} commands "
          f"all applied once, the last {time.monotonic() - killed:.1f} s after the kill")
    # Every request at its right version: 1, and one more per applied report.
    with_reports = set(reported)
    docs = rclient.mget([f"hf:v1:request:req-{i}" for i in ids])
    for command_id, doc in zip(ids, docs, strict=True):
        view = json.loads(doc or b"{}")
        assert view["version"] == (3 if command_id in with_reports else 1), command_id
    assert standby.sql("SELECT count(*) FROM commands") == str(len(commands))
    assert standby.sql("SELECT count(*) FROM dead_letters") == "0"
    log = worker.output()
    assert "\"event\": \"store_unavailable\"" in log, log[-3000:]
    scraped = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
    retries = [line for line in scraped.splitlines()
               if line.startswith("hf_worker_store_retries_total")]
    assert retries and float(retries[0].split()[-1]) > 0, retries


def _outcomes(client: redis.Redis, ids: list[str]) -> dict[str, dict[str, Any]]:
    docs = client.mget([f"hf:v1:command:{i}" for i in ids])
    return {i: json.loads(d) for i, d in zip(ids, docs, strict=True) if d}
