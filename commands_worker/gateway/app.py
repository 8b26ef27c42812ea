"""The gateway's endpoints: ``POST /commands/{create-request,return-machines,
update-machine-status}`` (bodies are the task kwargs) and the seed's ``POST /requests``
(create-request). Each answers ``202 Accepted`` with the command id, the request id and a
``Location`` on the query service to poll, once the broker holds the message."""

from __future__ import annotations

import hashlib
import logging
from functools import cache
from typing import Any, Final

import orjson
import redis
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from shared import brokers, names
from shared.asgi import BadBody, BearerTokens, read_json_object
from shared.client import CommandClient
from shared.commands import COMMAND_MODELS
from shared.hostfactory import time_ordered_id
from shared.ids import MAX_ID_LEN, default_request_id, default_return_id, is_valid_id
from shared.keys import gateway_key_of
from shared.redis_urls import sync_client
from shared.settings import Settings

COMMANDS: Final = {
    "create-request": names.CREATE_REQUEST_TASK,
    "return-machines": names.RETURN_MACHINES_TASK,
    "update-machine-status": names.UPDATE_MACHINE_STATUS_TASK,
    "report-launch-failure": names.REPORT_LAUNCH_FAILURE_TASK,
}
# 10,000 returned machines with long host names fit.
MAX_BODY_BYTES: Final = 4 * 1024 * 1024
JSON: Final = "application/json"
log = logging.getLogger("hostfactory.gateway")


def error(status: int, code: str, detail: Any, **more: Any) -> Response:
    return Response(orjson.dumps({"error": code, "detail": detail, **more}), status,
                    media_type=JSON)


class KeyReused(Exception):
    """An Idempotency-Key (command id) sent before with another command or body."""


class IdempotencyKeys:
    """What each command id was first sent as (task and body digest), kept as long as the
    worker keeps outcomes: the same key with the same command is a retry (sent again, taking
    effect once); with another command or body it is refused (409), never silently dropped.
    Kept in the broker's Redis, the one store the gateway already writes to (in the read
    cache's Redis when the broker is RabbitMQ)."""

    def __init__(self, client: redis.Redis, retention_s: int) -> None:
        self.client = client
        self.retention_s = retention_s

    def claim(self, command_id: str, task: str, kwargs: dict[str, Any]) -> None:
        body = {k: v for k, v in kwargs.items() if k != "command_id" and v is not None}
        digest = hashlib.sha256(task.encode() + b"\0" + orjson.dumps(
            body, option=orjson.OPT_SORT_KEYS)).hexdigest()
        mark = f"{task} {digest}"
        key = gateway_key_of(command_id)
        if self.client.set(key, mark, nx=True, ex=self.retention_s):
            return
        first = self.client.get(key)
        first_text = first.decode() if isinstance(first, bytes) else str(first)
        if first_text == mark:
            return  # a retry of the same command: sent again, applied once
        first_task = first_text.split(" ", 1)[0]
        raise KeyReused(
            f"Idempotency-Key {command_id!r} was first used for {first_task}"
            + (" with another body" if first_task == task else "")
            + ": a key names one command; use a new key for a new command")


def _problems(exc: ValidationError) -> list[dict[str, str]]:
    return [{"field": ".".join(str(p) for p in e["loc"]) or "(body)", "problem": e["msg"]}
            for e in exc.errors(include_url=False, include_input=False)]


class Gateway:
    def __init__(self, settings: Settings, client: CommandClient,
                 keys_seen: IdempotencyKeys | None) -> None:
        self.client = client
        self.query_url = settings.query_url.rstrip("/")
        self.keys_seen = keys_seen

    async def command(self, request: Request) -> Response:
        name = request.path_params.get("command", "create-request")
        task = COMMANDS.get(name)
        if task is None:
            return error(404, "not_found", f"no command {name!r}; one of {sorted(COMMANDS)}")
        try:
            body = await read_json_object(request, MAX_BODY_BYTES)
        except BadBody as exc:
            return error(exc.status, "invalid_body", exc.problem)
        command_id, refusal = _command_id(request, body, task)
        if refusal is not None:
            return refusal
        kwargs = {**body, "command_id": command_id}
        # Only an id the client chose can be reused; one made here is new by construction.
        chosen = "idempotency-key" in request.headers or body.get("command_id") is not None
        try:
            await run_in_threadpool(self._send, task, kwargs, chosen)
        except ValidationError as exc:
            return error(422, "invalid_command", _problems(exc))
        except KeyReused as exc:
            return error(409, "idempotency_key_reused", str(exc))
        except Exception as exc:  # kombu and redis raise many kinds; all mean "not sure"
            log.warning("broker refused a command", extra={
                "event": "broker_unavailable", "task": task, "error": str(exc)})
            return error(503, "broker_unavailable", "the broker did not confirm the command: "
                         "it may or may not have it; send it again with the same "
                         "command_id (it takes effect once)", command_id=command_id)
        return self._accepted(task, command_id, body)

    def _send(self, task: str, kwargs: dict[str, Any], chosen: bool) -> None:
        kwargs = self.client.validated(task, kwargs)  # a bad body never claims its key
        if chosen and self.keys_seen is not None:
            self.keys_seen.claim(kwargs["command_id"], task, kwargs)
        self.client.send(task, kwargs, checked=True)

    def _accepted(self, task: str, command_id: str, body: dict[str, Any]) -> Response:
        default = DEFAULT_IDS.get(task)
        request_id = body.get("request_id") or (default(command_id) if default else None)
        location = (f"{self.query_url}/requests/{request_id}"
                    if task != names.UPDATE_MACHINE_STATUS_TASK
                    else f"{self.query_url}/commands/{command_id}")
        answer = {"command_id": command_id, "task": task, "request_id": request_id,
                  "location": location, "outcome": f"{self.query_url}/commands/{command_id}"}
        return Response(orjson.dumps(answer), 202, media_type=JSON,
                        headers={"location": location})

    async def healthz(self, request: Request) -> Response:
        return Response(b'{"status":"ok"}', 200, media_type=JSON)

    async def openapi(self, request: Request) -> Response:
        return Response(openapi_document(), 200, media_type=JSON)


def _command_id(request: Request, body: dict[str, Any],
                task: str) -> tuple[str, Response | None]:
    """``Idempotency-Key`` or the body's ``command_id`` (the same, when both are sent), else
    a new time-ordered id: a retried POST with the same key is the same command."""
    key = request.headers.get("idempotency-key")
    given = body.get("command_id")
    if key is not None and not is_valid_id(key):
        return "", _invalid("Idempotency-Key", ID_RULE)
    if given is not None and not isinstance(given, str):
        return "", _invalid("command_id", "must be a string: an id")
    if given is not None and not is_valid_id(given):
        return "", _invalid("command_id", ID_RULE)
    if key is not None and given is not None and given != key:
        return "", _invalid("command_id", "differs from the Idempotency-Key header")
    command_id = given or key or time_ordered_id()
    default = DEFAULT_IDS.get(task)
    if default is not None and body.get("request_id") is None and not is_valid_id(
            default(command_id)):
        field = "Idempotency-Key" if key else "command_id"
        return "", _invalid(field, f"at most {MAX_ID_LEN - 4} characters without a "
                                   f"request_id: the request id {default('')}<id> must fit "
                                   f"{MAX_ID_LEN}")
    return command_id, None


ID_RULE: Final = "must follow the id rule (1-200 characters of A-Z a-z 0-9 . _ : @ + = -)"


def _invalid(field: str, problem: str) -> Response:
    return error(422, "invalid_command", [{"field": field, "problem": problem}])


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


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return error(exc.status_code, "not_found" if exc.status_code == 404 else "http_error",
                 exc.detail)


async def _server_error(request: Request, exc: Exception) -> Response:
    log.exception("gateway failed", extra={"event": "gateway_failed"})
    return error(500, "internal_error", "the gateway failed; see its log")


def _keys_register(settings: Settings) -> IdempotencyKeys | None:
    url = settings.cache_url if brokers.is_amqp(settings.broker_url) else settings.broker_url
    if not url.startswith(("redis://", "rediss://", "unix://", "redis+sentinel://")):
        log.warning("idempotency keys are not checked for reuse: no Redis to keep them in",
                    extra={"event": "idempotency_unchecked"})
        return None
    return IdempotencyKeys(sync_client(url, socket_timeout=5, socket_connect_timeout=5),
                           settings.command_retention_s)


def create_app(settings: Settings | None = None,
               client: CommandClient | None = None) -> BearerTokens:
    settings = settings or Settings.from_env()
    gateway = Gateway(settings, client or CommandClient(settings.broker_url,
                                                        connect_timeout_s=5.0),
                      _keys_register(settings))
    app = Starlette(routes=[
        Route("/commands/{command}", gateway.command, methods=["POST"]),
        Route("/requests", gateway.command, methods=["POST"]),
        Route("/healthz", gateway.healthz, methods=["GET"]),
        Route("/openapi.json", gateway.openapi, methods=["GET"]),
    ], exception_handlers={HTTPException: _http_error, Exception: _server_error})
    app.router.redirect_slashes = False  # a trailing slash is a JSON 404, not a redirect
    return BearerTokens(app, settings.gateway_api_tokens, open_paths=frozenset({"/healthz"}))
