"""Query parameters: one table that drives both their parsing and the OpenAPI document, so
the two cannot disagree (``wait`` is bounded by ``QUERY_MAX_WAIT_S`` in both)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final, Literal

from starlette.requests import Request

from shared.views import REQUEST_STATUSES

MAX_PAGE: Final = 500
MAX_VERSION: Final = 2**31
_INTEGER_RE: Final = re.compile(r"[0-9]{1,10}")


class BadParameter(Exception):
    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"{name}: {problem}")
        self.name, self.problem = name, problem


@dataclass(frozen=True)
class Param:
    name: str
    kind: Literal["integer", "boolean", "status", "cursor"]
    default: Any = None
    low: int = 0
    high: int | None = None  # None: the longest wait this service allows
    description: str = ""

    def parse(self, raw: str | None, max_wait_s: int) -> Any:
        if raw is None or raw == "":
            return self.default
        if self.kind == "integer":
            return self._integer(raw, max_wait_s)
        if self.kind == "boolean":
            return _boolean(self.name, raw)
        if self.kind == "status" and raw not in REQUEST_STATUSES:
            raise BadParameter(self.name, f"must be one of {', '.join(REQUEST_STATUSES)}")
        return raw

    def _integer(self, raw: str, max_wait_s: int) -> int:
        high = max_wait_s if self.high is None else self.high
        if not _INTEGER_RE.fullmatch(raw) or not self.low <= int(raw) <= high:
            raise BadParameter(self.name, f"must be an integer from {self.low} to {high}")
        return int(raw)

    def schema(self, max_wait_s: int) -> dict[str, Any]:
        schema: dict[str, Any]
        if self.kind == "integer":
            high = max_wait_s if self.high is None else self.high
            schema = {"type": "integer", "minimum": self.low, "maximum": high}
        elif self.kind == "boolean":
            schema = {"type": "boolean"}
        elif self.kind == "status":
            schema = {"type": "string", "enum": list(REQUEST_STATUSES)}
        else:
            schema = {"type": "string", "maxLength": 64}
        if self.default is not None:
            schema["default"] = self.default
        return {"name": self.name, "in": "query", "required": False, "schema": schema,
                "description": self.description}


def _boolean(name: str, raw: str) -> bool:
    lowered = raw.lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise BadParameter(name, "must be true or false")


MIN_VERSION: Final = Param("min_version", "integer", 0, 0, MAX_VERSION,
                           "never answer a view older than this version")
WAIT: Final = Param("wait", "integer", 0, 0, None,
                    "with min_version: seconds to hold the poll until the view reaches it")
CURSOR: Final = Param("cursor", "cursor", None, description="next_cursor of the page before")


def _limit(default: int, high: int) -> Param:
    return Param("limit", "integer", default, 1, high, "page size")


# Operation -> its query parameters.
QUERY_PARAMS: Final[dict[str, tuple[Param, ...]]] = {
    "get_request": (Param("include_machines", "boolean", True), MIN_VERSION, WAIT),
    "list_machines": (_limit(100, MAX_PAGE), CURSOR),
    "list_requests": (Param("status", "status"), _limit(50, MAX_PAGE), CURSOR,
                      Param("include_machines", "boolean", False)),
    "request_history": (),
    "get_machine": (MIN_VERSION,),
    "get_command": (MIN_VERSION,),
    "list_templates": (_limit(100, 1000), Param("offset", "integer", 0, 0, 10**6)),
}


class Parameters:
    """The table, bound to this service's settings."""

    def __init__(self, max_wait_s: int) -> None:
        self.max_wait_s = max_wait_s

    def parse(self, request: Request, operation: str) -> dict[str, Any]:
        """Every parameter of ``operation``, parsed; raises ``BadParameter``."""
        query = request.query_params
        return {p.name: p.parse(query.get(p.name), self.max_wait_s)
                for p in QUERY_PARAMS[operation]}

    def openapi(self, operation: str) -> list[dict[str, Any]]:
        return [p.schema(self.max_wait_s) for p in QUERY_PARAMS[operation]]
