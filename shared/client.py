"""A small producer client, never the worker's code.

    client = CommandClient.from_env()
    sent = client.create_request("x86-small", 2)
    print(sent.request_id)        # poll GET /requests/{request_id} right away

Commands are validated here first (the same models the worker uses), so a producer learns of
a bad command at once instead of from a dead letter. Any other Celery client may send the
same messages by task name; see docs/contract.md.

On a single Redis broker (``redis://``, ``rediss://``, ``unix://``) the client pushes the
message Celery would (``shared.wire``) with redis-py, and ``send_many`` pushes many in one
round trip: no Celery to load, a fraction of its CPU per message. Anywhere else (RabbitMQ with
its confirms, a failover list, kombu's Sentinel) it publishes through Celery.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from typing import Any

from shared import brokers, names, wire
from shared.commands import COMMAND_MODELS
from shared.ids import default_request_id
from shared.settings import Settings

log = logging.getLogger("hostfactory.client")
# A Redis broker that does not answer within this long is an error (Celery's own wait).
DEFAULT_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Sent:
    command_id: str
    task: str
    request_id: str | None = None
    machine_id: str | None = None


class CommandClient:
    def __init__(self, broker_url: str, connect_timeout_s: float | None = None) -> None:
        brokers.check(broker_url)
        self.redis: Any = None
        self.app: Any = None
        if brokers.is_plain_redis(broker_url):
            from shared.redis_urls import sync_client

            timeout = connect_timeout_s or DEFAULT_TIMEOUT_S
            self.redis = sync_client(broker_url, socket_timeout=timeout,
                                     socket_connect_timeout=timeout)
        else:
            from celery import Celery

            self.app = Celery("hostfactory-producer", broker=broker_url, set_as_current=False)
            # On RabbitMQ: quorum queues, and a send returns only after the broker's confirm.
            self.app.conf.update(brokers.producer_conf(broker_url, connect_timeout_s))
        self.options = brokers.send_options(broker_url)
        self.declared = not brokers.is_amqp(broker_url)

    @classmethod
    def from_env(cls) -> CommandClient:
        return cls(Settings.from_env().broker_url)

    def close(self) -> None:
        if self.app is not None:
            self.app.close()
        if self.redis is not None:
            self.redis.close()

    @staticmethod
    def validated(task: str, kwargs: dict[str, Any]) -> dict[str, Any]:
        """The kwargs as they will be sent (nulls dropped), once the contract's model took
        them; raises pydantic.ValidationError with every problem."""
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        COMMAND_MODELS[task].model_validate(kwargs)
        return kwargs

    def send(self, task: str, kwargs: dict[str, Any], checked: bool = False) -> Sent:
        """Validate (unless ``checked``: the caller has, with ``validated``) and publish one
        command; its id is the Celery task id unless given."""
        return self.send_many([(task, kwargs)], checked)[0]

    def send_many(self, commands: list[tuple[str, dict[str, Any]]],
                  checked: bool = False) -> list[Sent]:
        """``send`` for each (task, kwargs), every one validated before any is published; on
        Redis all in one round trip (a failure may leave some published: each takes effect
        once when sent again, by its command id)."""
        ready = []
        for task, given in commands:
            kwargs = given if checked else self.validated(task, given)
            ready.append((task, kwargs if kwargs.get("command_id")
                          else {**kwargs, "command_id": str(uuid.uuid4())}))
        if self.redis is not None:
            pipe = self.redis.pipeline(transaction=False)
            for task, kwargs in ready:
                queue = names.QUEUE_OF_TASK[task]
                pipe.lpush(queue, wire.redis_message(task, queue, kwargs["command_id"], kwargs))
            pipe.execute()
        else:
            if not self.declared:
                self._declare()
            for task, kwargs in ready:
                self.app.send_task(task, kwargs=kwargs, task_id=kwargs["command_id"],
                                   queue=names.QUEUE_OF_TASK[task], **self.options)
        return [_sent(task, kwargs) for task, kwargs in ready]

    def _declare(self) -> None:
        """On RabbitMQ, once: the queues as the contract declares them, or, where one exists
        otherwise, as it is (so a producer's send is not refused for it)."""
        with self.app.pool.acquire(block=True) as connection:
            for queue, error in brokers.adopt_declared_queues(
                    self.app.amqp.queues.values(), connection):
                log.warning(f"command queue {brokers.MISMATCH_WORDS}", extra={
                    "event": "queue_mismatch", "queue": queue, "error": error})
        self.declared = True

    def create_request(self, template_id: str, max_number: int, **optional: Any) -> Sent:
        return self.send(names.CREATE_REQUEST_TASK,
                         {"template_id": template_id, "max_number": max_number, **optional})

    def update_machine_status(self, machine_id: str, status: str, **optional: Any) -> Sent:
        return self.send(names.UPDATE_MACHINE_STATUS_TASK,
                         {"machine_id": machine_id, "status": status, **optional})

    def report_launch_failure(self, request_id: str, count: int, message: str,
                              **optional: Any) -> Sent:
        return self.send(names.REPORT_LAUNCH_FAILURE_TASK, {
            "request_id": request_id, "count": count, "message": message, **optional})


def _sent(task: str, kwargs: dict[str, Any]) -> Sent:
    request_id = kwargs.get("request_id")
    if task == names.CREATE_REQUEST_TASK and not request_id:
        request_id = default_request_id(kwargs["command_id"])
    return Sent(kwargs["command_id"], task, request_id, kwargs.get("machine_id"))


def fetch_json(url: str, timeout_s: float = 5.0) -> dict[str, Any] | None:
    """GET a JSON document; None on 404."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            body: dict[str, Any] = json.loads(response.read())
            return body
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise
