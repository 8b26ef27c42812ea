"""The service's OpenAPI document: paths written here, query parameters from the same table
that parses them (``parameters.py``), schemas from ``shared/views.py``."""

from __future__ import annotations

from functools import cache
from typing import Any

import orjson
from pydantic import TypeAdapter

from queries_service.parameters import Parameters
from shared.ids import MAX_ID_LEN
from shared.views import (
    CommandOutcomeView,
    ErrorBody,
    MachineView,
    RequestsPage,
    RequestView,
    TemplatesPage,
)

_MODELS = {m.__name__: m for m in (RequestView, MachineView, CommandOutcomeView, RequestsPage,
                                   TemplatesPage, ErrorBody)}
# Path -> (operation, OpenAPI operationId, summary, response schema name or None, path id)
_PATHS: tuple[tuple[str, str, str, str, str | None, str | None], ...] = (
    ("/requests/{request_id}", "get_request", "getRequest", "A request's view",
     "RequestView", "request_id"),
    ("/requests/{request_id}/machines", "list_machines", "listRequestMachines",
     "A page of a request's machines, in the order first reported", None, "request_id"),
    ("/requests/{request_id}/history", "request_history", "getRequestHistory",
     "Every command that touched the request or its machines, in order", None, "request_id"),
    ("/requests", "list_requests", "listRequests", "A page of request views",
     "RequestsPage", None),
    ("/machines/{machine_id}", "get_machine", "getMachine", "A machine's view",
     "MachineView", "machine_id"),
    ("/commands/{command_id}", "get_command", "getCommand", "A command's outcome",
     "CommandOutcomeView", "command_id"),
    ("/templates", "list_templates", "listTemplates",
     "Templates, filtered by any field (templateId=..., ncpus=...)", "TemplatesPage", None),
)


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


_ERRORS = {"401": {"description": "no valid bearer token", **_json(_ref("ErrorBody"))},
           "404": {"description": "unknown id", **_json(_ref("ErrorBody"))},
           "422": {"description": "bad parameter", **_json(_ref("ErrorBody"))},
           "503": {"description": "read cache unreachable", **_json(_ref("ErrorBody"))}}


def _get(summary: str, op_id: str, ok: dict[str, Any],
         params: list[dict[str, Any]]) -> dict[str, Any]:
    return {"get": {"summary": summary, "operationId": op_id, "parameters": params,
                    "responses": {"200": {"description": "OK", **ok}, **_ERRORS}}}


_HF_MACHINE = {"type": "object", "required": [
    "machineId", "name", "result", "status", "privateIpAddress", "launchtime", "message",
    "priceType", "instanceType", "instanceTags", "cloudHostId"], "properties": {
    "machineId": {"type": "string"}, "name": {"type": "string"},
    "result": {"enum": ["executing", "succeed", "fail"]}, "status": {"type": "string"},
    "privateIpAddress": {"type": ["string", "null"]},
    "publicIpAddress": {"type": "string"}, "launchtime": {"type": "integer"},
    "message": {"type": "string"}, "priceType": {"type": ["string", "null"]},
    "instanceType": {"type": ["string", "null"]}, "instanceTags": {"type": "string"},
    "cloudHostId": {"type": ["string", "null"]}, "rcAccount": {"type": "string"}},
    "additionalProperties": False}
_HF_HOSTS = {"type": "object", "properties": {"machines": {"oneOf": [
    {"type": "array", "maxItems": 10000, "items": {"type": "object"}}, {"type": "object"}]}}}
_HF_OPERATIONS: dict[str, tuple[str, str, dict[str, Any], dict[str, Any]]] = {
    "/hostfactory/request-status": (
        "getRequestStatus", "HostFactory's getRequestStatus for up to 1000 ids, in one call",
        {"type": "object", "properties": {"requests": {"oneOf": [
            {"type": "array", "maxItems": 1000, "items": {"type": "object", "properties": {
                "requestId": {"type": "string"}}}}, {"type": "object"}]}}},
        {"type": "object", "properties": {"requests": {"type": "array", "items": {
            "type": "object", "properties": {
                "requestId": {"type": "string"},
                "status": {"enum": ["running", "complete", "complete_with_error"]},
                "message": {"type": "string"},
                "machines": {"type": "array", "items": _HF_MACHINE}}}}}}),
    "/hostfactory/return-requests": (
        "getReturnRequests", "HostFactory's getReturnRequests: which listed hosts are gone "
        "or going", _HF_HOSTS,
        {"type": "object", "properties": {
            "status": {"const": "complete"}, "message": {"type": "string"},
            "requests": {"type": "array", "items": {"type": "object", "properties": {
                "machine": {"type": "string"},
                "gracePeriod": {"type": "integer", "minimum": 0}}}}}}),
}


def _hostfactory_paths() -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for path, (op_id, summary, body, answer) in _HF_OPERATIONS.items():
        paths[path] = {"post": {
            "summary": summary, "operationId": op_id,
            "requestBody": {"required": True, **_json(body)},
            "responses": {"200": {"description": "OK", **_json(answer)},
                          "400": {"description": "not a JSON object", **_json(_ref("ErrorBody"))},
                          "413": {"description": "too large", **_json(_ref("ErrorBody"))},
                          **_ERRORS}}}
    paths["/hostfactory/templates"] = _get(
        "HostFactory's getAvailableTemplates (503 rather than an empty list)",
        "getAvailableTemplates", _json({"type": "object", "properties": {
            "templates": {"type": "array", "minItems": 1, "items": {"type": "object"}},
            "message": {"type": "string"}}}), [])
    return paths


def _paths(parameters: Parameters) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for path, operation, op_id, summary, schema, ident in _PATHS:
        params = parameters.openapi(operation)
        if ident:
            params.insert(0, {"name": ident, "in": "path", "required": True, "schema": {
                "type": "string", "minLength": 1, "maxLength": MAX_ID_LEN}})
        ok = _json(_ref(schema) if schema else {"type": "object"})
        paths[path] = _get(summary, op_id, ok, params)
    plain = _json({"type": "object"})
    paths["/healthz"] = _get("Liveness", "healthz", plain, [])
    paths["/readyz"] = _get("Readiness: the read cache answers", "readyz", plain, [])
    paths["/metrics"] = _get("Prometheus metrics", "metrics",
                             {"content": {"text/plain": {"schema": {"type": "string"}}}}, [])
    paths.update(_hostfactory_paths())
    return paths


@cache
def document(max_wait_s: int) -> bytes:
    schemas: dict[str, Any] = {}
    for name, model in _MODELS.items():
        schema = TypeAdapter(model).json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[name] = schema
    doc = {"openapi": "3.1.0",
           "info": {"title": "hostfactory-cqrs query service", "version": "1"},
           "paths": _paths(Parameters(max_wait_s)), "components": {"schemas": schemas}}
    return orjson.dumps(doc)
