"""A failover of the read cache to a replica that lagged loses nothing a user can see.

A primary, a replica and three Sentinels on private ports. While 100 requests progress, the
replica is stopped (SIGSTOP) and the primary drops it (its output buffer for the replica
overflows), so the writes after that reach the primary alone; then the primary is killed -9
and the replica woken, and the Sentinels promote it: the writes of those last seconds are
gone. The worker notices by itself (the cache is another server) and re-projects what was
projected since the time the promoted replica still holds: every request view, index and
history then equals what a rebuild from the store writes, and every open request's acquire
event is in the feed, within the bound docs/contract.md states.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from commands_worker import bootstrap
from commands_worker.service_layer import maintenance
from shared import keys
from shared.settings import Settings
from tests.conftest import Proc, free_port, wait_for
from tests.integration.test_rebuild import snapshot
from tests.integration.test_replicas import RedisServer

REQUESTS = 100
MACHINES = 2


class Sentinels:
    def __init__(self, root: Path, primary_port: int, count: int = 3) -> None:
        self.ports = [free_port() for _ in range(count)]
        self.procs: list[subprocess.Popen[bytes]] = []
        for n, port in enumerate(self.ports):
            home = root / f"sentinel{n}"
            home.mkdir()
            conf = home / "sentinel.conf"
            conf.write_text(f"port {port}\nbind 127.0.0.1\ndir {home}\n"
                            f"sentinel monitor hfcache 127.0.0.1 {primary_port} 2\n"
                            "sentinel down-after-milliseconds hfcache 1000\n"
                            "sentinel failover-timeout hfcache 5000\n")
            self.procs.append(subprocess.Popen(["redis-server", str(conf), "--sentinel"],
                                               stdout=subprocess.DEVNULL))

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.ports)
        return f"redis+sentinel://{hosts}/hfcache/0"

    def primary_port(self) -> int | None:
        try:
            found = redis.Redis(port=self.ports[0]).execute_command(  # type: ignore[no-untyped-call]
                "SENTINEL", "GET-MASTER-ADDR-BY-NAME", "hfcache")
            return int(found[1]) if found else None
        except redis.RedisError:
            return None

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
            proc.wait(timeout=10)


@pytest.fixture
def cache_pair(tmp_path: Path) -> Iterator[tuple[RedisServer, RedisServer, Sentinels]]:
    for sub in ("p", "r"):
        (tmp_path / sub).mkdir()
    primary = RedisServer(tmp_path / "p").start()
    replica = RedisServer(tmp_path / "r", "--replicaof", "127.0.0.1", str(primary.port)).start()
    client = redis.Redis(port=replica.port)
    wait_for(lambda: client.info("replication")["master_link_status"] == "up", 15,
             what="replication")
    sentinels = Sentinels(tmp_path, primary.port)
    try:
        wait_for(lambda: sentinels.primary_port() == primary.port, 20, what="the sentinels")
        yield primary, replica, sentinels
    finally:
        sentinels.stop()
        if replica.proc is not None and replica.proc.poll() is None:
            os.kill(replica.proc.pid, signal.SIGCONT)
        replica.stop()
        primary.stop()


def _progress(producer: Any, ids: list[str], stop: threading.Event) -> None:
    """Each request's machines go pending, then running, a few at a time: the views, history
    and indexes change all through the failover."""
    step = 0
    while not stop.is_set() and step < 2 * MACHINES * REQUESTS:
        for _ in range(20):
            if step >= 2 * MACHINES * REQUESTS:
                break
            phase, rest = divmod(step, MACHINES * REQUESTS)
            request, machine = divmod(rest, MACHINES)
            producer.send_task(
                "commands.update_machine_status", queue="commands.machines",
                kwargs={"machine_id": f"{ids[request]}-m{machine}",
                        "status": ("pending", "running")[phase],
                        "request_id": f"req-{ids[request]}", "observed_at": 1e9 + step})
            step += 1
        time.sleep(0.1)


def test_a_failover_to_a_lagging_replica_is_healed(
        cache_pair: tuple[RedisServer, RedisServer, Sentinels],
        start_worker: Callable[..., Proc], producer: Any,
        rebuilt: Callable[[], dict[bytes, Any]]) -> None:
    primary, replica, sentinels = cache_pair
    worker = start_worker(2, CACHE_URL=sentinels.url)
    ids = [str(uuid.uuid4()) for _ in range(REQUESTS)]
    for command_id in ids:
        producer.send_task("commands.create_request", task_id=command_id,
                           queue="commands.requests",
                           kwargs={"template_id": "x86-small", "max_number": MACHINES + 1})
    cut_off = redis.Redis(port=primary.port)
    wait_for(lambda: cut_off.exists(*[keys.request_key(f"req-{i}") for i in ids]) == REQUESTS,
             30, what="every request created")
    stop = threading.Event()
    sender = threading.Thread(target=_progress, args=(producer, ids, stop))
    sender.start()
    try:
        time.sleep(1.0)
        # The replica stops reading; the primary gives up on it once its buffer overflows.
        assert replica.proc is not None and primary.proc is not None
        os.kill(replica.proc.pid, signal.SIGSTOP)
        cut_off.config_set("client-output-buffer-limit", "replica 256kb 0 0")
        cut_off.set("junk", b"x" * 4_000_000)
        wait_for(lambda: cut_off.info("replication")["connected_slaves"] == 0, 10,
                 what="the primary to drop the replica")
        time.sleep(2.0)  # views, history and feed events written to the primary alone
        on_primary = {k for k in cut_off.scan_iter("hf:v1:machine:*")}
        primary.proc.kill()
        primary.proc.wait(timeout=10)
        killed = time.monotonic()
        os.kill(replica.proc.pid, signal.SIGCONT)
        promoted = redis.Redis(port=replica.port)
        wait_for(lambda: sentinels.primary_port() == replica.port, 30, what="the promotion")
        lost = on_primary - set(promoted.scan_iter("hf:v1:machine:*"))
        assert lost, "the replica did not lag: nothing to heal"
        sender.join(120)
    finally:
        stop.set()
        sender.join(30)

    final_at = f"{ids[-1]}-m{MACHINES - 1}"
    wait_for(lambda: promoted.exists(keys.machine_key(final_at)) and
             json.loads(promoted.get(keys.machine_key(final_at)) or b"{}")["status"] == "running",
             60, what="the last report applied")

    def healed() -> bool:
        return snapshot(promoted) == rebuilt()

    wait_for(healed, 60, every_s=0.5, what="the promoted cache to equal a rebuild")
    took = time.monotonic() - killed
    log = worker.output()
    assert "cache_healing" in log and "another server" in log
    assert '"healed": "since"' in log  # from the kept outbox, not a full rebuild
    entries: Any = promoted.xrange(keys.FEED_STREAM_KEY)
    feed = {fields[b"event_id"].decode() for _, fields in entries}
    assert {f"acquire:req-{i}" for i in ids} <= feed
    print(f"\n{len(lost)} machine views lost in the failover; the cache equalled a rebuild "
          f"{took:.1f} s after the kill")


@pytest.fixture
def rebuilt(stack_env: dict[str, str], tmp_path: Path) -> Iterator[Callable[[], dict[bytes, Any]]]:
    """What a rebuild from the store writes, into a Redis of its own, each time asked."""
    (tmp_path / "x").mkdir()
    target = RedisServer(tmp_path / "x").start()

    def rebuild() -> dict[bytes, Any]:
        client = redis.Redis(port=target.port)
        client.flushdb()
        d = bootstrap.build(Settings.from_env({**stack_env, "CACHE_URL": target.url}))
        try:
            bootstrap.project_stored_templates(d)
            maintenance.rebuild_read_model(d.store, d.projector, d.settings.command_retention_s)
            return snapshot(client)
        finally:
            d.store.engine.dispose()

    yield rebuild
    target.stop()
