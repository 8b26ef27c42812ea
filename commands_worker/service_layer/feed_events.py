"""The provider feed's events (docs/providers.md): what a provider must act on, built from
aggregates, and the outbox row that carries each to the feed."""

from __future__ import annotations

from typing import Any

import orjson

from commands_worker.domain.model import Machine, Request, Template
from commands_worker.service_layer.ports import REPUBLISH, FeedEvent, ViewDoc
from shared import keys


def event_doc(event: FeedEvent, retention_s: int, republish: bool = False) -> ViewDoc:
    """A feed event as an outbox row: the projector adds it to the stream once (its marker
    key is kept ``retention_s``), or again with ``republish`` (a rebuild: the open work goes
    out again; providers dedupe on event ids); ``status`` carries its type."""
    body = orjson.dumps({"event_id": event.event_id, "type": event.type, **event.payload})
    return ViewDoc(keys.feed_published_key(event.event_id), REPUBLISH if republish else 1,
                   body, ttl_s=retention_s, status=event.type)


def acquire_event(request: Request, template: Template | None) -> FeedEvent:
    payload = {
        "request_id": request.request_id, "template_id": request.template_id,
        "template": template.document if template else None,
        "machine_count": request.max_number, "attributes": request.attributes,
        "deadline_at": request.deadline_at, "created_at": request.created_at}
    if template is not None and template.user_data is not None:
        # The template's userDataScript, read when the templates file was loaded (base64).
        payload["user_data"] = template.user_data
    return FeedEvent("acquire", f"acquire:{request.request_id}", payload)


def _machine_ref(machine: Machine) -> dict[str, Any]:
    return {"machine_id": machine.machine_id, "name": machine.details.get("name"),
            "request_id": machine.request_id}


def return_event(request: Request, machines: list[Machine]) -> FeedEvent:
    return FeedEvent("return", f"return:{request.request_id}", {
        "request_id": request.request_id, "machines": [_machine_ref(m) for m in machines],
        "deadline_at": request.deadline_at, "created_at": request.created_at})


def release_event(machine: Machine, reason: str) -> FeedEvent:
    return FeedEvent("release", f"release:{machine.machine_id}", {
        "request_id": machine.request_id, "machines": [_machine_ref(machine)],
        "reason": reason})
