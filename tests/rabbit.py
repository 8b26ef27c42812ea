"""A private RabbitMQ cluster for the tests: Debian's rabbitmq-server, N nodes on free loopback
ports, each with its own node name, data and log directories (never the machine's own node).
Nodes run as the ``rabbitmq`` user (the server drops to it), so their directories are its."""

from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from kombu import Connection

from shared import brokers


def _free_port() -> int:
    """A free port below the ephemeral range: a port the kernel handed out (bind to 0) can be
    taken again by an outgoing connection before the node listens on it."""
    while True:
        port = random.randint(20000, 29999)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port


def available() -> bool:
    return shutil.which("rabbitmq-server") is not None and shutil.which("rabbitmqctl") is not None


@dataclass
class Node:
    name: str
    port: int
    dist_port: int
    base: Path

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    def env(self) -> dict[str, str]:
        return {**os.environ,
                "RABBITMQ_NODENAME": self.name, "RABBITMQ_NODE_PORT": str(self.port),
                "RABBITMQ_DIST_PORT": str(self.dist_port),
                "RABBITMQ_MNESIA_BASE": str(self.base / "mnesia"),
                "RABBITMQ_LOG_BASE": str(self.base / "log"),
                "RABBITMQ_CONFIG_FILE": str(self.base / "rabbitmq.conf"),
                "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.base / "enabled_plugins"),
                "RABBITMQ_CONF_ENV_FILE": "/dev/null"}


class RabbitCluster:
    def __init__(self, size: int) -> None:
        tag = uuid.uuid4().hex[:6]
        # Its own directory, which the rabbitmq user can reach (pytest's are root's alone).
        self.root = root = Path(tempfile.mkdtemp(prefix=f"hfcqrs-rabbit-{tag}-"))
        root.chmod(0o755)
        self.nodes = [Node(f"hfq{tag}{i}@localhost", _free_port(), _free_port(),
                           root / f"node{i}") for i in range(size)]

    @property
    def url(self) -> str:
        """Celery's failover list over every node."""
        return ";".join(node.url for node in self.nodes)

    def ctl(self, node: Node, *args: str, timeout: float = 120) -> str:
        done = subprocess.run(["rabbitmqctl", "-q", "-n", node.name, *args],
                              capture_output=True, text=True, timeout=timeout, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)} on {node.name}: "
                               f"{done.stderr.strip() or done.stdout.strip()}")
        return done.stdout

    def start(self) -> RabbitCluster:
        for node in self.nodes:
            (node.base / "mnesia").mkdir(parents=True, exist_ok=True)
            (node.base / "log").mkdir(parents=True, exist_ok=True)
            (node.base / "rabbitmq.conf").write_text(
                f"listeners.tcp.local = 127.0.0.1:{node.port}\nloopback_users = none\n")
            (node.base / "enabled_plugins").write_text("[].\n")
            subprocess.run(["chown", "-R", "rabbitmq:rabbitmq", str(node.base)], check=True)
            self.boot(node)
        for node in self.nodes:
            self.await_startup(node)
        first = self.nodes[0]
        for node in self.nodes[1:]:
            self.ctl(node, "stop_app")
            self.ctl(node, "join_cluster", first.name)
            self.ctl(node, "start_app")
        for node in self.nodes:
            self.await_startup(node)
        return self

    def await_startup(self, node: Node, timeout_s: float = 120) -> None:
        """A detached node registers its name a moment after it is started: until then
        rabbitmqctl cannot reach it at all."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self.ctl(node, "await_startup", "--timeout", "60")
                return
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    @staticmethod
    def boot(node: Node) -> None:
        subprocess.run(["rabbitmq-server", "-detached"], env=node.env(), check=True,
                       capture_output=True, timeout=60)

    def restart(self, node: Node) -> None:
        """Start a node that was stopped or killed: it rejoins the cluster it knew."""
        self.boot(node)
        self.await_startup(node)

    def pid(self, node: Node) -> int:
        return int(re.sub(r"\D", "", self.ctl(node, "eval", "os:getpid().")))

    def kill(self, node: Node) -> None:
        """SIGKILL the node's Erlang VM: no goodbye to the cluster or to clients."""
        pid = self.pid(node)
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)
        raise RuntimeError(f"{node.name} did not die")

    def running(self) -> list[Node]:
        up = []
        for node in self.nodes:
            try:
                self.ctl(node, "ping", timeout=10)
                up.append(node)
            except (RuntimeError, subprocess.TimeoutExpired):
                pass
        return up

    def leader_of(self, queue: str) -> Node:
        """The node that leads a quorum queue now."""
        via = self.running()[0]
        for line in self.ctl(via, "list_queues", "name", "leader").splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0] == queue:
                return next(n for n in self.nodes if n.name == parts[1])
        raise LookupError(f"no leader found for {queue}")

    def purge(self) -> None:
        """Empty the contract's queues (declared as the project declares them)."""
        with Connection(";".join(n.url for n in self.running())) as connection:
            channel = connection.channel()
            for queue in brokers.command_queues(self.url):
                queue(channel).declare()
                queue(channel).purge()

    def depth(self, queue: str) -> tuple[int, int]:
        """Messages ready and unacknowledged on ``queue``."""
        via = self.running()[0]
        for line in self.ctl(via, "list_queues", "name", "messages_ready",
                             "messages_unacknowledged").splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[0] == queue:
                return int(parts[1]), int(parts[2])
        raise LookupError(queue)

    def stop(self) -> None:
        for node in self.nodes:
            try:
                self.ctl(node, "stop", timeout=60)
            except (RuntimeError, subprocess.TimeoutExpired):
                with contextlib.suppress(RuntimeError, ValueError, ProcessLookupError,
                                         subprocess.TimeoutExpired):
                    os.kill(self.pid(node), signal.SIGKILL)
        shutil.rmtree(self.root, ignore_errors=True)
