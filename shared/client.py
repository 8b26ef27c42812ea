"""A small producer client. It needs Celery (kombu) only, never the worker's code.

    client = CommandClient.from_env()
    sent = client.create_request("x86-small", 2)
    print(sent.request_id)        # poll GET /requests/{request_id} right away

Commands are validated here first (the same models the worker uses), so a producer learns of
a bad command at once instead of from a dead letter. Any other Celery client may send the
same messages by task name; see docs/contract.md.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from typing import Any

from celery import Celery

from shared import brokers, names
from shared.commands import COMMAND_MODELS
from shared.ids import default_request_id
from shared.settings import Settings

log = logging.getLogger("hostfactory.client")


@dataclass(frozen=True)
class Sent:
    command_id: str
    task: str
    request_id: str | None = None
    machine_id: str | None = None


class CommandClient:
    def __init__(self, broker_url: str, connect_timeout_s: float | None = None) -> None:
        brokers.check(broker_url)
        self.app = Celery("hostfactory-producer", broker=broker_url, set_as_current=False)
        # On RabbitMQ: quorum queues, and a send returns only after the broker's confirm.
        self.app.conf.update(brokers.producer_conf(broker_url, connect_timeout_s))
        self.options = brokers.send_options(broker_url)
        self.declared = not brokers.is_amqp(broker_url)

    @classmethod
    def from_env(cls) -> CommandClient:
        return cls(Settings.from_env().broker_url)

    def close(self) -> None:
        self.app.close()

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
        if not checked:
            kwargs = self.validated(task, kwargs)
        command_id = kwargs.get("command_id") or str(uuid.uuid4())
        if not self.declared:
            self._declare()
        self.app.send_task(task, kwargs=kwargs, task_id=command_id,
                           queue=names.QUEUE_OF_TASK[task], **self.options)
        request_id = kwargs.get("request_id")
        if task == names.CREATE_REQUEST_TASK and not request_id:
            request_id = default_request_id(command_id)
        return Sent(command_id, task, request_id, kwargs.get("machine_id"))

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
