"""RabbitMQ as the production broker, on a private three-node cluster (tests/rabbit.py).

The acceptance scenario: the node leading ``commands.requests`` is killed -9 while three kinds
of producer send (HostFactory's ``requestMachines.sh``, the HTTP gateway, a plain Celery
client): every command any of them was told was accepted is applied exactly once, the node
restarts and rejoins, and nothing is left in the queues. Beside it what is particular to
RabbitMQ: a poison message counted by the broker, a queue somebody declared otherwise.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from kombu import Connection, Exchange, Queue

from shared.client import CommandClient
from tests.conftest import Proc, wait_for
from tests.e2e.conftest import HostFactory
from tests.rabbit import RabbitCluster

pytestmark = pytest.mark.parametrize("broker_kind", ["rabbitmq"], indirect=True)
CREATE = "commands.create_request"
GOOD = {"template_id": "x86-small", "max_number": 1}


class Accepted:
    """What each producer was told was accepted, by command id."""

    def __init__(self) -> None:
        self.ids: dict[str, list[str]] = {"plugin": [], "gateway": [], "celery": []}
        self.refused: dict[str, int] = {"plugin": 0, "gateway": 0, "celery": 0}
        self.lock = threading.Lock()

    def add(self, who: str, command_id: str | None) -> None:
        with self.lock:
            if command_id is None:
                self.refused[who] += 1
            else:
                self.ids[who].append(command_id)


def _plugin(hostfactory: HostFactory, accepted: Accepted, stop: threading.Event) -> None:
    while not stop.is_set():
        code, answer = hostfactory.call("requestMachines", {
            "template": {"templateId": "x86-small", "machineCount": 1}})
        # requestMachines answers the request id; the command id is the part after "req-"
        accepted.add("plugin", answer["requestId"].removeprefix("req-") if code == 0 else None)


def _gateway(url: str, accepted: Accepted, stop: threading.Event) -> None:
    with httpx.Client(timeout=30) as client:
        while not stop.is_set():
            command_id = str(uuid.uuid4())
            try:
                answer = client.post(f"{url}/commands/create-request",
                                     json={**GOOD, "command_id": command_id})
                ok = answer.status_code == 202
            except httpx.HTTPError:
                ok = False
            accepted.add("gateway", command_id if ok else None)
            time.sleep(0.02)


def _celery(producer: Any, accepted: Accepted, stop: threading.Event) -> None:
    while not stop.is_set():
        command_id = str(uuid.uuid4())
        try:
            producer.send_task(CREATE, kwargs=GOOD, task_id=command_id,
                               queue="commands.requests")
            accepted.add("celery", command_id)
        except Exception:
            accepted.add("celery", None)
        time.sleep(0.01)


def test_killing_the_leader_loses_nothing_a_producer_was_told(
        rabbit_cluster: RabbitCluster, start_worker: Callable[..., Proc],
        hostfactory: HostFactory, gateway_url: str, producer: Any,
        rclient: redis.Redis) -> None:
    start_worker()
    accepted, stop = Accepted(), threading.Event()
    senders = [threading.Thread(target=_plugin, args=(hostfactory, accepted, stop)),
               threading.Thread(target=_gateway, args=(gateway_url, accepted, stop)),
               threading.Thread(target=_celery, args=(producer, accepted, stop))]
    for sender in senders:
        sender.start()
    wait_for(lambda: all(len(ids) >= 3 for ids in accepted.ids.values()), 60,
             what="every producer under way")
    leader = rabbit_cluster.leader_of("commands.requests")
    rabbit_cluster.kill(leader)
    killed_at = time.monotonic()
    before = {who: len(ids) for who, ids in accepted.ids.items()}
    wait_for(lambda: all(len(accepted.ids[who]) >= before[who] + 5 for who in before), 90,
             what="every producer accepted again after the kill")
    stop.set()
    for sender in senders:
        sender.join(60)
    took_over = rabbit_cluster.leader_of("commands.requests")
    assert took_over != leader

    everything = [i for ids in accepted.ids.values() for i in ids]
    print(f"\nkilled {leader.name} (leader of commands.requests); "
          f"{took_over.name} took over; producers told 'accepted' "
          f"{ {w: len(i) for w, i in accepted.ids.items()} }, 'not accepted' {accepted.refused};"
          f" all accepted again {time.monotonic() - killed_at:.1f} s after the kill")
    outcomes = wait_for(lambda: (o := _outcomes(rclient, everything)) and
                        len(o) == len(everything) and o, 120, every_s=0.5,
                        what="an outcome for every accepted command")
    assert {o["outcome"] for o in outcomes.values()} == {"applied"}
    versions = rclient.mget([f"hf:v1:request:req-{i}" for i in everything])
    assert all(json.loads(v or b"{}").get("version") == 1 for v in versions)  # applied once

    rabbit_cluster.restart(leader)
    members = rabbit_cluster.ctl(leader, "list_queues", "name", "members")
    assert members.count(leader.name) == 2, members  # a member of both queues again
    wait_for(lambda: all(rabbit_cluster.depth(q) == (0, 0)
                         for q in ("commands.requests", "commands.machines")), 60,
             what="empty queues")


def _outcomes(client: redis.Redis, ids: list[str]) -> dict[str, dict[str, Any]]:
    docs = client.mget([f"hf:v1:command:{i}" for i in ids])
    return {i: json.loads(d) for i, d in zip(ids, docs, strict=True) if d}


def test_a_message_handed_back_too_often_is_a_dead_letter_and_replays(
        rabbit_cluster: RabbitCluster, start_worker: Callable[..., Proc],
        stack_env: dict[str, str], producer: Any, rclient: redis.Redis) -> None:
    """The broker counts deliveries (x-delivery-count); past MAX_REDELIVERIES the worker
    dead-letters the message instead of trying it once more, and a replay sends it anew."""
    sent = producer.send_task(CREATE, kwargs=GOOD, queue="commands.requests")
    with Connection(stack_env["BROKER_URL"]) as connection:  # a consumer that keeps dying
        channel = connection.channel()
        queue = Queue("commands.requests", Exchange("commands.requests", "direct"),
                      routing_key="commands.requests",
                      queue_arguments={"x-queue-type": "quorum"})(channel)
        for _ in range(3):
            message = wait_for(lambda: queue.get(no_ack=False), 10,
                               what="the message")
            message.reject(requeue=True)
    start_worker(MAX_REDELIVERIES="2")
    from tests.integration.test_dead_letters import dead_letters, hfctl

    [letter] = wait_for(lambda: dead_letters(stack_env), 30, what="the dead letter")
    assert "handed back 3 times" in letter["reason"], letter
    refused = json.loads(rclient.get(f"hf:v1:command:{sent.id}") or b"{}")
    assert refused["outcome"] == "rejected" and "handed back" in refused["reason"]
    replayed = hfctl(stack_env, "dead-letters", "replay", str(letter["id"]))
    assert replayed.returncode == 0, replayed.stderr
    wait_for(lambda: json.loads(rclient.get(f"hf:v1:command:{sent.id}") or b"{}")[
        "outcome"] == "applied", 30, what="the replayed command applied")
    assert json.loads(rclient.get(f"hf:v1:request:req-{sent.id}") or b"{}")["version"] == 1


def test_a_queue_declared_otherwise_is_consumed_and_said(
        rabbit_cluster: RabbitCluster, start_worker: Callable[..., Proc],
        stack_env: dict[str, str], rclient: redis.Redis, tmp_path: Path) -> None:
    """A producer's plain Celery made ``commands.machines`` a classic queue before any worker
    ran: the worker still consumes it (nothing waits for ever) and says in its log what it
    costs, and this project's producers still send to it."""
    with Connection(stack_env["BROKER_URL"]) as connection:
        channel = connection.channel()
        Queue("commands.machines", channel=channel).delete()
        Queue("commands.machines", Exchange("commands.machines", "direct"),
              routing_key="commands.machines")(channel).declare()  # classic
        connection.Producer().publish(
            [[], {"request_id": "req-classic", "count": 1, "message": "no"}, {}],
            exchange="commands.machines", routing_key="commands.machines",
            headers={"task": "commands.report_launch_failure", "id": "classic-1"})
    client = CommandClient(stack_env["BROKER_URL"])
    client.create_request("x86-small", 3, request_id="req-classic")
    try:
        worker = start_worker()
        wait_for(lambda: rclient.get("hf:v1:command:classic-1"), 30,
                 what="the message on the classic queue")
        assert "queue_mismatch" in worker.output()
        sent = client.report_launch_failure("req-classic", 1, "no")  # RabbitMQ takes it
        client.close()
        wait_for(lambda: rclient.get(f"hf:v1:command:{sent.command_id}"), 30,
                 what="our producer's command on the classic queue")
        for command_id in ("classic-1", sent.command_id):
            outcome = json.loads(rclient.get(f"hf:v1:command:{command_id}") or b"{}")
            assert outcome["outcome"] == "applied", outcome
    finally:
        with Connection(stack_env["BROKER_URL"]) as connection:
            Queue("commands.machines", channel=connection.channel()).delete()
        rabbit_cluster.purge()  # the quorum queue again, for the tests that follow


def test_queue_depths_are_read_from_the_cluster(rabbit_cluster: RabbitCluster,
                                                broker_url: str, producer: Any) -> None:
    """What the worker's metrics (hf_worker_queue_depth) and hfctl stats report on RabbitMQ:
    the messages ready on each quorum queue, whichever node answers."""
    from commands_worker.adapters.broker.queues import AmqpQueues

    for _ in range(3):
        producer.send_task("commands.update_machine_status", queue="commands.machines",
                           kwargs={"machine_id": "m-1", "status": "running"})
    readings = AmqpQueues(broker_url)
    assert readings.depths(("commands.requests", "commands.machines")) == {
        "commands.requests": (0, None), "commands.machines": (3, None)}
    rabbit_cluster.purge()
    assert readings.depths(("commands.machines",)) == {"commands.machines": (0, None)}
