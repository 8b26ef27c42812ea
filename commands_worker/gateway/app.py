"""The gateway's endpoints: ``POST /commands/{create-request,return-machines,
update-machine-status}`` (bodies are the task kwargs) and the seed's ``POST /requests``
(create-request). Each answers ``202 Accepted`` with the command id, the request id and a
``Location`` on the query service to poll, once the broker holds the message."""

from __future__ import annotations

import logging
from functools import cache
from typing import Any, Final

import orjson
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from shared import names
from shared.asgi import BadBody, BearerTokens, read_json_object
from shared.client import CommandClient
from shared.commands import COMMAND_MODELS
from shared.hostfactory import time_ordered_id
from shared.ids import default_request_id, default_return_id, is_valid_id
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


def error(status: int, code: str, detail: Any) -> Response:
    return Response(orjson.dumps({"error": code, "detail": detail}), status, media_type=JSON)


def _problems(exc: ValidationError) -> list[dict[str, str]]:
    return [{"field": ".".join(str(p) for p in e["loc"]) or "(body)", "problem": e["msg"]}
            for e in exc.errors(include_url=False, include_input=False)]


class Gateway:
    def __init__(self, settings: Settings, client: CommandClient) -> None:
        self.client = client
        self.query_url = settings.query_url.rstrip("/")

    async def command(self, request: Request) -> Response:
        name = request.path_params.get("command", "create-request")
        task = COMMANDS.get(name)
        if task is None:
            return error(404, "not_found", f"no command {name!r}; one of {sorted(COMMANDS)}")
        try:
            body = await read_json_object(request, MAX_BODY_BYTES)
        except BadBody as exc:
            return error(exc.status, "invalid_body", exc.problem)
        command_id, refusal = _command_id(request, body)
        if refusal is not None:
            return refusal
        kwargs = {**body, "command_id": command_id}
        try:
            await run_in_threadpool(self.client.send, task, kwargs)
        except ValidationError as exc:
            return error(422, "invalid_command", _problems(exc))
        except Exception as exc:  # kombu raises many kinds; all mean "not published"
            log.warning("broker refused a command", extra={
                "event": "broker_unavailable", "task": task, "error": str(exc)})
            return error(503, "broker_unavailable", "the broker did not take the command; "
                                                    "send it again (same Idempotency-Key)")
        return self._accepted(task, command_id, body)

    def _accepted(self, task: str, command_id: str, body: dict[str, Any]) -> Response:
        request_id = body.get("request_id")
        if task == names.CREATE_REQUEST_TASK:
            request_id = request_id or default_request_id(command_id)
        elif task == names.RETURN_MACHINES_TASK:
            request_id = request_id or default_return_id(command_id)
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


def _command_id(request: Request, body: dict[str, Any]) -> tuple[str, Response | None]:
    """``Idempotency-Key`` or the body's ``command_id`` (the same, when both are sent), else
    a new time-ordered id: a retried POST with the same key is the same command."""
    key = request.headers.get("idempotency-key")
    given = body.get("command_id")
    if key is not None and not is_valid_id(key):
        return "", error(422, "invalid_command", [{
            "field": "Idempotency-Key", "problem": "must follow the id rule (1-200 characters "
                                                  "of A-Z a-z 0-9 . _ : @ + = -)"}])
    if key is not None and given is not None and given != key:
        return "", error(422, "invalid_command", [{
            "field": "command_id", "problem": "differs from the Idempotency-Key header"}])
    if given is not None:
        return given if isinstance(given, str) else "", None
    return key or time_ordered_id(), None


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


def create_app(settings: Settings | None = None,
               client: CommandClient | None = None) -> BearerTokens:
    settings = settings or Settings.from_env()
    gateway = Gateway(settings, client or CommandClient(settings.broker_url,
                                                        connect_timeout_s=5.0))
    app = Starlette(routes=[
        Route("/commands/{command}", gateway.command, methods=["POST"]),
        Route("/requests", gateway.command, methods=["POST"]),
        Route("/healthz", gateway.healthz, methods=["GET"]),
        Route("/openapi.json", gateway.openapi, methods=["GET"]),
    ], exception_handlers={HTTPException: _http_error, Exception: _server_error})
    return BearerTokens(app, settings.gateway_api_tokens, open_paths=frozenset({"/healthz"}))
