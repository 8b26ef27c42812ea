"""The gateway's endpoints: ``POST /commands/{create-request,return-machines,
update-machine-status,report-launch-failure}`` (bodies are the task kwargs) and the seed's
``POST /requests`` (create-request). Each answers ``202 Accepted`` with the command id, the
request id and a ``Location`` on the query service to poll, once the broker holds the message.
Besides: ``GET /healthz``, ``GET /openapi.json``; anything else is a JSON 404 or 405.

Served on granian's RSGI interface (``python -m commands_worker.gateway``), and on ASGI for
any other server and for tests: the two are thin adapters around one ``Gateway.respond``.
No web framework: a profile under load spent half the gateway's time in Starlette's routing,
middleware, Request and Response, and in ASGI's message dicts (bench/README.md, "Speed, third
round")."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from functools import cache
from typing import Any, Final

import orjson
from pydantic import ValidationError

from commands_worker.gateway.publish import KeyReused, Publisher, publisher_for
from shared import names
from shared.asgi import (
    BODY_LENGTH_REQUIRED,
    BadBody,
    Message,
    Scope,
    asgi_body,
    bearer_allowed,
    read_json,
    rsgi_body,
)
from shared.client import CommandClient
from shared.commands import COMMAND_MODELS
from shared.hostfactory import time_ordered_id
from shared.ids import MAX_ID_LEN, default_request_id, default_return_id, is_valid_id
from shared.settings import Settings

COMMANDS: Final = names.GATEWAY_COMMANDS
# 10,000 returned machines with long host names fit.
MAX_BODY_BYTES: Final = 4 * 1024 * 1024
JSON: Final = "application/json"
log = logging.getLogger("hostfactory.gateway")

# An answer: status, JSON body, headers besides Content-Type (and Content-Length).
Answer = tuple[int, bytes, tuple[tuple[str, str], ...]]
# A request header by its lower-case name; a body read no further than a limit.
Header = Callable[[str], "str | None"]
ReadBody = Callable[[int], Awaitable[bytes]]


def refused(status: int, code: str, detail: Any, **more: Any) -> Answer:
    return status, orjson.dumps({"error": code, "detail": detail, **more}), ()


HEALTHY: Final[Answer] = (200, b'{"status":"ok"}', ())
NOT_FOUND: Final = refused(404, "not_found", "Not Found")
METHOD_NOT_ALLOWED: Final = refused(405, "http_error", "Method Not Allowed")
UNAUTHORIZED: Final[Answer] = (401, orjson.dumps({
    "error": "unauthorized", "detail": "send Authorization: Bearer <token>"}),
    (("www-authenticate", "Bearer"),))
READING: Final = frozenset({"GET", "HEAD"})
# A command's body must declare its length: a chunked one could be cut short or badly framed
# without granian's RSGI interface telling (its chunk iterator just ends), and an incomplete
# command must never be taken for a complete one.
LENGTH_REQUIRED: Final = refused(411, "length_required", BODY_LENGTH_REQUIRED)


def _problems(exc: ValidationError) -> list[dict[str, str]]:
    return [{"field": ".".join(str(p) for p in e["loc"]) or "(body)", "problem": e["msg"]}
            for e in exc.errors(include_url=False, include_input=False)]


class Gateway:
    def __init__(self, settings: Settings, publisher: Publisher) -> None:
        self.publisher = publisher
        self.query_url = settings.query_url.rstrip("/")
        self.tokens = [t.encode() for t in settings.gateway_api_tokens]

    async def respond(self, method: str, path: str, header: Header,
                      read_body: ReadBody) -> Answer:
        try:
            return await self._route(method, path, header, read_body)
        except Exception:
            log.exception("gateway failed", extra={"event": "gateway_failed"})
            return refused(500, "internal_error", "the gateway failed; see its log")

    async def _route(self, method: str, path: str, header: Header,
                     read_body: ReadBody) -> Answer:
        if path == "/healthz":  # open, for orchestrators, whatever the tokens
            return HEALTHY if method in READING else METHOD_NOT_ALLOWED
        if self.tokens and not bearer_allowed(
                self.tokens, (header("authorization") or "").encode("latin-1")):
            return UNAUTHORIZED
        if path == "/openapi.json":
            return (200, openapi_document(), ()) if method in READING else METHOD_NOT_ALLOWED
        name = "create-request" if path == "/requests" else (
            path[len("/commands/"):] if path.startswith("/commands/") else "")
        if not name or "/" in name:  # a trailing slash too: a JSON 404, not a redirect
            return NOT_FOUND
        if method != "POST":
            return METHOD_NOT_ALLOWED
        return await self.command(name, header, read_body)

    async def command(self, name: str, header: Header, read_body: ReadBody) -> Answer:
        task = COMMANDS.get(name)
        if task is None:
            return refused(404, "not_found", f"no command {name!r}; one of {sorted(COMMANDS)}")
        declared = header("content-length")
        if declared is None:
            return LENGTH_REQUIRED
        try:
            body = await read_json(lambda: read_body(MAX_BODY_BYTES), declared, MAX_BODY_BYTES)
        except BadBody as exc:
            return refused(exc.status, "invalid_body", exc.problem)
        key = header("idempotency-key")
        command_id, refusal = _command_id(key, body, task)
        if refusal is not None:
            return refusal
        # Only an id the client chose can be reused; one made here is new by construction.
        chosen = key is not None or body.get("command_id") is not None
        try:
            # The kwargs as sent (nulls dropped); a bad body never claims its key.
            kwargs = CommandClient.validated(task, {**body, "command_id": command_id})
        except ValidationError as exc:
            return refused(422, "invalid_command", _problems(exc))
        try:
            await self.publisher.publish(task, kwargs, chosen)
        except KeyReused as exc:
            return refused(409, "idempotency_key_reused", str(exc))
        except Exception as exc:  # kombu and redis raise many kinds; all mean "not sure"
            log.warning("broker refused a command", extra={
                "event": "broker_unavailable", "task": task, "error": str(exc)})
            return refused(503, "broker_unavailable", "the broker did not confirm the "
                           "command: it may or may not have it; send it again with the same "
                           "command_id (it takes effect once)", command_id=command_id)
        return self._accepted(task, command_id, body)

    def _accepted(self, task: str, command_id: str, body: dict[str, Any]) -> Answer:
        default = DEFAULT_IDS.get(task)
        request_id = body.get("request_id") or (default(command_id) if default else None)
        location = (f"{self.query_url}/requests/{request_id}"
                    if task != names.UPDATE_MACHINE_STATUS_TASK
                    else f"{self.query_url}/commands/{command_id}")
        answer = {"command_id": command_id, "task": task, "request_id": request_id,
                  "location": location, "outcome": f"{self.query_url}/commands/{command_id}"}
        return 202, orjson.dumps(answer), (("location", location),)

    async def __rsgi__(self, scope: Any, protocol: Any) -> None:
        """granian's RSGI interface."""
        if scope.proto != "http":
            return
        status, body, more = await self.respond(
            scope.method, scope.path, scope.headers.get, lambda _: rsgi_body(protocol))
        with contextlib.suppress(RuntimeError):  # the client went away
            protocol.response_bytes(status, [("content-type", JSON), *more],
                                    b"" if scope.method == "HEAD" else body)

    async def __call__(self, scope: Scope, receive: Callable[[], Awaitable[Message]],
                       send: Callable[[Message], Awaitable[None]]) -> None:
        """ASGI."""
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        headers: dict[bytes, bytes] = {}
        for name, value in scope["headers"]:
            headers.setdefault(name, value)

        def header(name: str) -> str | None:
            value = headers.get(name.encode())
            return None if value is None else value.decode("latin-1")

        status, body, more = await self.respond(
            scope["method"], scope["path"], header, lambda limit: asgi_body(receive, limit))
        await send({"type": "http.response.start", "status": status, "headers": [
            (b"content-type", JSON.encode()), (b"content-length", str(len(body)).encode()),
            *((k.encode(), v.encode("latin-1")) for k, v in more)]})
        await send({"type": "http.response.body",
                    "body": b"" if scope["method"] == "HEAD" else body})


async def _lifespan(receive: Callable[[], Awaitable[Message]],
                    send: Callable[[Message], Awaitable[None]]) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def _command_id(key: str | None, body: dict[str, Any],
                task: str) -> tuple[str, Answer | None]:
    """``Idempotency-Key`` or the body's ``command_id`` (the same, when both are sent), else
    a new time-ordered id: a retried POST with the same key is the same command."""
    given = body.get("command_id")
    if key is not None and not is_valid_id(key):
        return "", _invalid("Idempotency-Key", ID_RULE)
    if given is not None and not isinstance(given, str):
        return "", _invalid("command_id", "must be a string: an id")
    if given is not None and not is_valid_id(given):
        return "", _invalid("command_id", ID_RULE)
    if key is not None and given is not None and given != key:
        return "", _invalid("command_id", "differs from the Idempotency-Key header")
    if given is None and key is None:
        return time_ordered_id(), None  # 36 characters: any id made from it fits
    command_id = given if given is not None else key
    assert command_id is not None
    default = DEFAULT_IDS.get(task)
    if default is not None and body.get("request_id") is None and not is_valid_id(
            default(command_id)):
        field = "Idempotency-Key" if key else "command_id"
        return "", _invalid(field, f"at most {MAX_ID_LEN - 4} characters without a "
                                   f"request_id: the request id {default('')}<id> must fit "
                                   f"{MAX_ID_LEN}")
    return command_id, None


ID_RULE: Final = "must follow the id rule (1-200 characters of A-Z a-z 0-9 . _ : @ + = -)"


def _invalid(field: str, problem: str) -> Answer:
    return refused(422, "invalid_command", [{"field": field, "problem": problem}])


DEFAULT_IDS: Final = {names.CREATE_REQUEST_TASK: default_request_id,
                      names.RETURN_MACHINES_TASK: default_return_id}


@cache
def openapi_document() -> bytes:
    paths: dict[str, Any] = {}
    schemas: dict[str, Any] = {}
    for name, task in COMMANDS.items():
        model = COMMAND_MODELS[task]
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
        paths[f"/commands/{name}"] = {"post": {
            "summary": f"Send {task} (kwargs as the body)", "operationId": name,
            "parameters": [{"name": "Idempotency-Key", "in": "header", "required": False,
                            "schema": {"type": "string", "maxLength": 200}}],
            "requestBody": {"required": True, "content": {JSON: {"schema": {
                "$ref": f"#/components/schemas/{model.__name__}"}}}},
            "responses": {"202": {"description": "published; poll the Location"},
                          **{code: {"description": text} for code, text in (
                              ("400", "not a JSON object"), ("401", "no valid bearer token"),
                              ("413", "body too large"), ("422", "invalid command"),
                              ("503", "broker unavailable"))}}}}
    paths["/requests"] = {"post": {**paths["/commands/create-request"]["post"],
                                   "operationId": "createRequestAlias"}}
    return orjson.dumps({"openapi": "3.1.0",
                         "info": {"title": "hostfactory-cqrs command gateway", "version": "1"},
                         "paths": paths, "components": {"schemas": schemas}})


def create_app(settings: Settings | None = None) -> Gateway:
    """The gateway: an RSGI app (``__rsgi__``) and an ASGI app (``__call__``)."""
    settings = settings or Settings.from_env()
    return Gateway(settings, publisher_for(settings.broker_url, settings.cache_url,
                                           settings.command_retention_s, connect_timeout_s=5.0))
