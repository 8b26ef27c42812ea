"""The consumer-side batcher, over hand-written fakes of Celery's consumer, pool and timer:
what it hands the pool, when, and what becomes of each message after the pool's verdict."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest

from commands_worker.entrypoints.batching import FLUSH_EVERY, Batcher
from commands_worker.entrypoints.items import (
    ACK,
    ARRIVED_HEADER,
    OUTAGES_HEADER,
    REQUEUE,
    WAITS_HEADER,
    Action,
    BatchItem,
    Verdict,
)


@dataclass
class FakeMessage:
    headers: dict[str, Any]
    kwargs: dict[str, Any]
    state: str = "RECEIVED"
    delivery_info: dict[str, Any] = field(
        default_factory=lambda: {"routing_key": "commands.requests"})

    def decode(self) -> tuple[list[Any], dict[str, Any], dict[str, Any]]:
        return [], self.kwargs, {}

    def ack(self) -> None:
        self.state = "ACK"

    def reject(self, requeue: bool = False) -> None:
        self.state = "REQUEUED" if requeue else "REJECTED"

    @property
    def channel(self) -> Any:
        return self  # no ack_many: messages are acknowledged one by one

    @property
    def qos(self) -> Any:
        return object()


class FakeTimer:
    def __init__(self) -> None:
        self.due: list[tuple[float, Callable[[], None]]] = []

    def call_after(self, delay_s: float, fn: Callable[[], None]) -> Any:
        entry = (delay_s, fn)
        self.due.append(entry)
        timer = self

        class Ref:
            def cancel(self) -> None:
                if entry in timer.due:
                    timer.due.remove(entry)

        return Ref()

    def fire(self) -> None:
        due, self.due = self.due, []
        for _, fn in due:
            fn()


class FakePool:
    num_processes = 1

    def __init__(self) -> None:
        self.batches: list[tuple[list[BatchItem], Callable[..., None]]] = []
        self.failures: list[Callable[[BaseException], None]] = []

    def apply_async(self, fn: Any, args: tuple[Any, ...], callback: Callable[..., None],
                    error_callback: Callable[[BaseException], None]) -> None:
        self.batches.append((args[0], callback))
        self.failures.append(error_callback)


class FakeQos:
    def __init__(self) -> None:
        self.held = 0

    def increment_eventually(self) -> None:
        self.held += 1

    def decrement_eventually(self) -> None:
        self.held -= 1


@dataclass
class FakeConsumer:
    connection: object = field(default_factory=object)
    pool: FakePool = field(default_factory=FakePool)
    timer: FakeTimer = field(default_factory=FakeTimer)
    qos: FakeQos = field(default_factory=FakeQos)


class FakeBroker:
    """Stands in for the Celery app: what it publishes is what a retry puts on a queue."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def send_task(self, name: str, **options: Any) -> None:
        self.sent.append({"task": name, **options})


@pytest.fixture
def parts() -> tuple[Batcher, FakeConsumer, FakeBroker]:
    consumer, broker = FakeConsumer(), FakeBroker()
    return Batcher(broker, consumer), consumer, broker


def message(n: int, **headers: Any) -> FakeMessage:
    return FakeMessage({"id": f"t{n}", "task": "commands.create_request", **headers},
                       {"template_id": "x", "max_number": 1})


def deliver(batcher: Batcher, msg: FakeMessage) -> None:
    batcher.on_message(msg, None, None, None, None)


def test_messages_gather_for_a_moment_then_go_together(parts: Any) -> None:
    batcher, consumer, _ = parts
    for n in range(3):
        deliver(batcher, message(n))
    assert consumer.pool.batches == []  # gathering
    consumer.timer.fire()
    [(items, _)] = consumer.pool.batches
    assert [i.command_id for i in items] == ["t0", "t1", "t2"]
    assert items[0] == BatchItem("t0", "commands.create_request", [],
                                 {"template_id": "x", "max_number": 1}, "commands.requests",
                                 arrived_at=items[0].arrived_at)
    assert abs(items[0].arrived_at - time.time()) < 5  # stamped when taken


def test_a_full_batch_goes_at_once(parts: Any) -> None:
    batcher, consumer, _ = parts
    for n in range(FLUSH_EVERY):
        deliver(batcher, message(n))
    assert len(consumer.pool.batches) == 1 and len(consumer.pool.batches[0][0]) == FLUSH_EVERY


def test_while_the_pool_is_busy_messages_gather_into_the_next_batch(parts: Any) -> None:
    batcher, consumer, _ = parts
    first = message(0)
    deliver(batcher, first)
    consumer.timer.fire()
    later = [message(n) for n in range(1, 6)]
    for msg in later:
        deliver(batcher, msg)
    consumer.timer.fire()
    assert len(consumer.pool.batches) == 1  # its one process is busy
    _, done = consumer.pool.batches[0]
    done([ACK])
    assert first.state == "ACK"
    assert [i.command_id for i in consumer.pool.batches[1][0]] == [f"t{n}" for n in range(1, 6)]


def test_verdicts_settle_each_message(parts: Any) -> None:
    batcher, consumer, broker = parts
    arrived = time.time() - 7.5  # a retry carries its first arrival
    msgs = [message(0), message(1), message(2, **{WAITS_HEADER: 3, OUTAGES_HEADER: 1,
                                                  ARRIVED_HEADER: arrived})]
    for msg in msgs:
        deliver(batcher, msg)
    consumer.timer.fire()
    _, done = consumer.pool.batches[0]
    done([ACK, REQUEUE, Verdict(Action.RETRY, 0.5, "waits")])
    assert [m.state for m in msgs] == ["ACK", "REQUEUED", "ACK"]  # the retry is re-sent
    [again] = broker.sent
    assert (again["task_id"], again["queue"]) == ("t2", "commands.requests")
    # Due half a second on (an eta header, not a countdown: see batching._send_again).
    due = datetime.fromisoformat(again["headers"].pop("eta")).timestamp()
    assert 0.3 < due - time.time() <= 0.5
    # Only its own budget spent once more; its first arrival kept.
    assert again["headers"] == {WAITS_HEADER: 4, OUTAGES_HEADER: 1, ARRIVED_HEADER: arrived}


def test_an_outage_retry_leaves_the_wait_budget_alone(parts: Any) -> None:
    batcher, consumer, broker = parts
    deliver(batcher, message(0, **{WAITS_HEADER: 11}))
    consumer.timer.fire()
    consumer.pool.batches[0][1]([Verdict(Action.RETRY, 2.0, "outages")])
    headers = dict(broker.sent[0]["headers"])
    assert abs(headers.pop(ARRIVED_HEADER) - time.time()) < 5
    assert 1.5 < datetime.fromisoformat(headers.pop("eta")).timestamp() - time.time() <= 2.0
    assert headers == {WAITS_HEADER: 11, OUTAGES_HEADER: 1}


def test_nonsense_budget_headers_count_as_none_spent(parts: Any) -> None:
    batcher, consumer, _ = parts
    deliver(batcher, message(0, **{WAITS_HEADER: "lots", OUTAGES_HEADER: -4}))
    consumer.timer.fire()
    [item] = consumer.pool.batches[0][0]
    assert (item.waits, item.outages) == (0, 0)


def test_a_retry_that_is_not_due_is_held_until_it_is(parts: Any) -> None:
    batcher, consumer, _ = parts
    in_ten_minutes = datetime.fromtimestamp(time.time() + 600, UTC).isoformat()
    deliver(batcher, message(0, eta=in_ten_minutes))
    assert consumer.qos.held == 1
    [(delay_s, _)] = consumer.timer.due
    assert 590 < delay_s <= 600
    consumer.timer.fire()  # it falls due
    consumer.timer.fire()  # the gathering moment passes
    assert consumer.qos.held == 0 and len(consumer.pool.batches) == 1


def test_a_message_due_in_a_thousand_years_is_refused_not_held(parts: Any) -> None:
    batcher, consumer, _ = parts
    deliver(batcher, message(0, eta="2999-01-01T00:00:00+00:00"))
    consumer.timer.fire()
    assert consumer.qos.held == 0
    [item] = consumer.pool.batches[0][0]
    assert "more than 3600 s ahead" in item.refusal


def test_a_lost_batch_hands_every_message_back(parts: Any) -> None:
    batcher, consumer, _ = parts
    msgs = [message(n) for n in range(3)]
    for msg in msgs:
        deliver(batcher, msg)
    consumer.timer.fire()
    consumer.pool.failures[0](RuntimeError("the pool process died"))
    assert [m.state for m in msgs] == ["REQUEUED"] * 3
    deliver(batcher, message(9))  # the pool slot is free again
    consumer.timer.fire()
    assert [i.command_id for i in consumer.pool.batches[1][0]] == ["t9"]
