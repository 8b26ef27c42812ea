"""The service's OpenAPI document: paths written here, schemas taken from shared/views.py."""

from __future__ import annotations

from functools import cache
from typing import Any

import orjson
from pydantic import TypeAdapter

from shared.views import (
    REQUEST_STATUSES,
    CommandOutcomeView,
    ErrorBody,
    MachineView,
    RequestsPage,
    RequestView,
    TemplatesPage,
)

_MODELS = {m.__name__: m for m in (RequestView, MachineView, CommandOutcomeView, RequestsPage,
                                   TemplatesPage, ErrorBody)}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def _id_param(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True,
            "schema": {"type": "string", "minLength": 1, "maxLength": 200}}


def _int(name: str, low: int, high: int) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False,
            "schema": {"type": "integer", "minimum": low, "maximum": high}}


def _bool(name: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": {"type": "boolean"}}


_ERRORS = {"404": {"description": "unknown id", **_json(_ref("ErrorBody"))},
           "422": {"description": "bad parameter", **_json(_ref("ErrorBody"))},
           "503": {"description": "read cache unreachable", **_json(_ref("ErrorBody"))}}


def _get(summary: str, schema: dict[str, Any], params: list[dict[str, Any]],
         op_id: str) -> dict[str, Any]:
    responses: dict[str, Any] = {"200": {"description": "OK", **_json(schema)}, **_ERRORS}
    return {"get": {"summary": summary, "operationId": op_id, "parameters": params,
                    "responses": responses}}


def _paths() -> dict[str, Any]:
    status = {"name": "status", "in": "query", "required": False,
              "schema": {"type": "string", "enum": list(REQUEST_STATUSES)}}
    cursor = {"name": "cursor", "in": "query", "required": False,
              "schema": {"type": "string", "maxLength": 64}}
    plain = {"type": "object"}
    return {
        "/requests/{request_id}": _get(
            "A request's view", _ref("RequestView"),
            [_id_param("request_id"), _bool("include_machines"),
             _int("min_version", 0, 2**31), _int("wait", 0, 60)], "getRequest"),
        "/requests/{request_id}/machines": _get(
            "A page of a request's machines, in the order first reported", plain,
            [_id_param("request_id"), _int("limit", 1, 500), cursor], "listRequestMachines"),
        "/requests": _get("A page of request views", _ref("RequestsPage"),
                          [status, _int("limit", 1, 500), cursor, _bool("include_machines")],
                          "listRequests"),
        "/machines/{machine_id}": _get("A machine's view", _ref("MachineView"),
                                       [_id_param("machine_id"), _int("min_version", 0, 2**31)],
                                       "getMachine"),
        "/commands/{command_id}": _get("A command's outcome", _ref("CommandOutcomeView"),
                                       [_id_param("command_id")], "getCommand"),
        "/templates": _get("Templates, filtered by any field (templateId=..., ncpus=...)",
                           _ref("TemplatesPage"),
                           [_int("limit", 1, 1000), _int("offset", 0, 10**6)], "listTemplates"),
        "/healthz": _get("Liveness", plain, [], "healthz"),
        "/readyz": _get("Readiness: the read cache answers", plain, [], "readyz"),
    }


@cache
def document() -> bytes:
    schemas: dict[str, Any] = {}
    for name, model in _MODELS.items():
        schema = TypeAdapter(model).json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[name] = schema
    doc = {"openapi": "3.1.0",
           "info": {"title": "hostfactory-cqrs query service", "version": "1"},
           "paths": _paths(), "components": {"schemas": schemas}}
    return orjson.dumps(doc)
