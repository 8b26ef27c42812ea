"""The HostFactory provider plugin: ``hfctl hostfactory OP -f INPUT_FILE``.

HostFactory (IBM Spectrum Symphony, LSF's resource connector) runs one of five scripts
(``hostfactory/scripts/OP.sh``) with ``-f input.json`` and reads exactly one JSON object from
stdout; exit 0 on success, 1 with ``{"message": ...}`` on any failure. Logs go to
``$HF_PROVIDER_LOGDIR`` (or stderr), never to stdout.

The plugin is a client of the pair: it sends commands by the public wire contract (Celery
messages on the broker) and reads the query service's ``/hostfactory/...`` answers over HTTP.
The three reading operations import neither Celery nor pydantic, so they start fast.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import os
import socket
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TextIO

import orjson

from shared import hostfactory as hf
from shared import names
from shared.ids import default_request_id, default_return_id

OPERATIONS: Final = ("getAvailableTemplates", "requestMachines", "requestReturnMachines",
                     "getRequestStatus", "getReturnRequests")
CONFIG_FILE: Final = "hostfactory-cqrs.json"
# Keys HostFactory's requestMachines input may carry besides the template; LSF adds these.
PASSED_ON: Final = ("rc_account", "userData")
log = logging.getLogger("hostfactory.plugin")


class PluginError(Exception):
    """What HostFactory is told (exit 1, ``{"message": ...}``); it retries the call later."""


@dataclass(frozen=True)
class PluginConfig:
    broker_url: str
    query_url: str
    token: str | None
    # Set: commands go to the command gateway over HTTP (no broker client to load: the
    # fastest send); unset: to the broker directly (shared.client).
    gateway_url: str | None
    gateway_token: str | None
    timeout_s: float
    provider: str

    @classmethod
    def load(cls, env: Mapping[str, str]) -> PluginConfig:
        """The environment, over ``$HF_PROVIDER_CONFDIR/hostfactory-cqrs.json`` (LSF:
        ``$PRO_CONF_DIR``), over the defaults."""
        merged = {**_config_file(env), **{k: v for k, v in env.items() if v}}
        try:
            timeout_s = float(merged.get("HF_CQRS_HTTP_TIMEOUT_S", "20"))
        except ValueError:
            raise PluginError("HF_CQRS_HTTP_TIMEOUT_S must be a number of seconds") from None
        return cls(
            broker_url=merged.get("BROKER_URL") or merged.get("REDIS_URL")
            or "redis://localhost:6379/0",
            query_url=(merged.get("QUERY_URL") or "http://127.0.0.1:8080").rstrip("/"),
            token=merged.get("QUERY_API_TOKEN") or None,
            gateway_url=(merged.get("GATEWAY_URL") or "").rstrip("/") or None,
            gateway_token=merged.get("GATEWAY_API_TOKEN") or None,
            timeout_s=timeout_s,
            provider=merged.get("HF_PROVIDER_NAME") or "hostfactory-cqrs",
        )


def _config_file(env: Mapping[str, str]) -> dict[str, str]:
    confdir = env.get("HF_PROVIDER_CONFDIR") or env.get("PRO_CONF_DIR")
    if not confdir:
        return {}
    path = Path(confdir) / CONFIG_FILE
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise PluginError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise PluginError(f"{path} must hold a JSON object of settings")
    return {str(k): str(v) for k, v in data.items() if v is not None}


# --- HTTP to the query service ------------------------------------------------------------
def _http(config: PluginConfig, path: str, body: object | None = None) -> Any:
    """One request to the query service; its JSON answer, or a PluginError that says why.
    ``timeout_s`` is a deadline for the whole call (connect, send, every byte of the
    answer), not per read: a server trickling bytes cannot hold HostFactory past it."""
    data = None if body is None else orjson.dumps(body)
    headers = {"Accept": "application/json"}
    if data is not None:
        headers["Content-Type"] = "application/json"
    if config.token:
        headers["Authorization"] = f"Bearer {config.token}"
    started = time.monotonic()
    try:
        status, reason, raw = _exchange(config.query_url + path, data, headers,
                                        started + config.timeout_s)
        answer = orjson.loads(raw) if status < 400 else None
    except (OSError, http.client.HTTPException, ValueError) as exc:
        raise PluginError(f"the query service at {config.query_url} is unreachable "
                          f"({exc or type(exc).__name__})") from None
    if status >= 400:
        raise PluginError(f"the query service answered {status} to {path}: "
                          f"{_detail(raw, reason)}")
    log.debug("query service answered", extra={"event": "http", "path": path,
                                               "ms": round((time.monotonic() - started) * 1e3)})
    return answer


def _exchange(url: str, data: bytes | None, headers: dict[str, str],
              deadline: float) -> tuple[int, str, bytes]:
    """Status, reason and body of one HTTP exchange that ends by ``deadline`` (monotonic),
    or TimeoutError: a watchdog shuts the socket at the deadline, whatever read it is in."""
    parts = urllib.parse.urlsplit(url)
    kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    conn = kind(parts.hostname or "", parts.port, timeout=_left(deadline))
    expired = threading.Event()

    def cut() -> None:
        expired.set()
        if conn.sock is not None:
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_RDWR)

    watchdog = threading.Timer(_left(deadline), cut)
    watchdog.daemon = True
    watchdog.start()
    try:
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        conn.request("GET" if data is None else "POST", target, body=data, headers=headers)
        response = conn.getresponse()
        return response.status, response.reason, response.read()
    except (OSError, http.client.HTTPException):
        if expired.is_set():
            raise TimeoutError("no complete answer within HF_CQRS_HTTP_TIMEOUT_S") from None
        raise
    finally:
        watchdog.cancel()
        conn.close()


def _left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("no complete answer within HF_CQRS_HTTP_TIMEOUT_S")
    return left


def _detail(raw: bytes, reason: str) -> str:
    try:
        body = json.loads(raw)
    except ValueError:
        return reason
    return str(body.get("detail") or body.get("error") or body) if isinstance(body, dict) \
        else str(body)


# --- the five operations ------------------------------------------------------------------
def get_available_templates(config: PluginConfig, _: dict[str, Any]) -> dict[str, Any]:
    answer = _http(config, "/hostfactory/templates")
    if not answer.get("templates"):  # never an empty list: HostFactory would drop us
        raise PluginError("no templates are loaded")
    return dict(answer)


def get_request_status(config: PluginConfig, given: dict[str, Any]) -> dict[str, Any]:
    answer = _http(config, "/hostfactory/request-status",
                   {"requests": _entries(given, "requests")})
    return {"requests": answer["requests"]}


def get_return_requests(config: PluginConfig, given: dict[str, Any]) -> dict[str, Any]:
    return dict(_http(config, "/hostfactory/return-requests",
                      {"machines": _entries(given, "machines")}))


def request_machines(config: PluginConfig, given: dict[str, Any]) -> dict[str, Any]:
    template = given.get("template")
    if isinstance(template, list) and len(template) == 1:
        template = template[0]
    if not isinstance(template, dict):
        raise PluginError('the input needs "template": {"templateId", "machineCount"}')
    template_id, count = template.get("templateId"), template.get("machineCount")
    if not isinstance(template_id, str) or not template_id:
        raise PluginError("template.templateId must be a template's id")
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise PluginError(f"template.machineCount must be a whole number ≥ 1 (got {count!r})")
    _check_template(config, template_id, count)
    attributes = {k: given[k] for k in PASSED_ON if given.get(k) is not None}
    command_id = hf.time_ordered_id()
    _send(config, names.CREATE_REQUEST_TASK, {
        "template_id": template_id, "max_number": count, "command_id": command_id,
        "attributes": attributes or None, "user_id": config.provider})
    return {"requestId": default_request_id(command_id), "message": "Request accepted."}


def _check_template(config: PluginConfig, template_id: str, count: int) -> None:
    query = urllib.parse.urlencode({"templateId": template_id, "limit": 1})
    found = _http(config, f"/templates?{query}").get("templates") or []
    if not found:
        raise PluginError(f"unknown template {template_id!r}")
    most = found[0].get("maxNumber")
    if isinstance(most, int) and most != -1 and count > most:
        raise PluginError(f"machineCount {count} is over template {template_id!r}'s "
                          f"maxNumber {most}")


def request_return_machines(config: PluginConfig, given: dict[str, Any]) -> dict[str, Any]:
    machines = []
    for entry in _entries(given, "machines"):
        name = entry.get("name")
        if not isinstance(name, str) or not name:
            raise PluginError(f"every machine needs its host name: {entry!r}")
        machine_id = entry.get("machineId")
        machines.append({"name": name, **({"machine_id": machine_id}
                                          if isinstance(machine_id, str) and machine_id
                                          else {})})
    if not machines:
        raise PluginError('the input lists no machines ("machines": [{"name": ...}])')
    command_id = hf.time_ordered_id()
    _send(config, names.RETURN_MACHINES_TASK, {
        "machines": machines, "command_id": command_id, "user_id": config.provider})
    return {"requestId": default_return_id(command_id), "message": "Return accepted."}


def _entries(given: dict[str, Any], field: str) -> list[dict[str, Any]]:
    value = given.get(field, [])
    items = [value] if isinstance(value, dict) else value
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise PluginError(f"{field} must be an object or an array of objects")
    return items


def _send(config: PluginConfig, task: str, kwargs: dict[str, Any]) -> None:
    """Send one command: to the gateway when one is configured, else to the broker. Either
    way it is validated with the worker's own models before anyone acts on it, and a send
    not confirmed within a few seconds is an error HostFactory retries."""
    if config.gateway_url:
        _send_over_http(config, task, kwargs)
    else:
        _send_to_broker(config, task, kwargs)
    log.info("command sent", extra={"event": "sent", "task": task,
                                    "command_id": kwargs["command_id"]})


def _send_over_http(config: PluginConfig, task: str, kwargs: dict[str, Any]) -> None:
    """POST the command to the gateway, its id as the Idempotency-Key: 202 means the broker
    holds it (on RabbitMQ, confirmed); a 422 carries every problem, as the models say it."""
    assert config.gateway_url
    name = next(n for n, t in names.GATEWAY_COMMANDS.items() if t == task)
    headers = {"Content-Type": "application/json", "Accept": "application/json",
               "Idempotency-Key": kwargs["command_id"]}
    if config.gateway_token:
        headers["Authorization"] = f"Bearer {config.gateway_token}"
    data = orjson.dumps({k: v for k, v in kwargs.items() if v is not None})
    deadline = time.monotonic() + min(config.timeout_s, 10.0)
    try:
        status, reason, raw = _exchange(f"{config.gateway_url}/commands/{name}", data,
                                        headers, deadline)
    except (OSError, http.client.HTTPException) as exc:
        raise PluginError(f"the command gateway at {config.gateway_url} did not take the "
                          f"command ({exc or type(exc).__name__})") from None
    if status == 202:
        return
    if status == 422:
        try:
            problems = "; ".join(f"{p['field']}: {p['problem']}"
                                 for p in json.loads(raw)["detail"])
        except (ValueError, KeyError, TypeError):
            problems = _detail(raw, reason)
        raise PluginError(f"refused before sending: {problems}")
    raise PluginError(f"the command gateway answered {status}: {_detail(raw, reason)}")


def _send_to_broker(config: PluginConfig, task: str, kwargs: dict[str, Any]) -> None:
    from pydantic import ValidationError

    from shared.client import CommandClient

    try:
        client = CommandClient(config.broker_url, connect_timeout_s=min(config.timeout_s, 5.0))
    except ValueError as exc:
        raise PluginError(f"BROKER_URL cannot be used: {exc}") from None
    try:
        client.send(task, kwargs)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}"
                             for e in exc.errors(include_url=False))
        raise PluginError(f"refused before sending: {problems}") from None
    except Exception as exc:  # kombu raises many kinds; all mean "not sent"
        raise PluginError(f"the broker at {_safe(config.broker_url)} did not take the "
                          f"command ({type(exc).__name__}: {exc})") from None
    finally:
        client.close()


def _safe(url: str) -> str:
    """The broker URL (or failover list) without credentials, for a message."""
    shown = []
    for one in url.split(";"):
        parts = urllib.parse.urlsplit(one.strip())
        try:
            port = f":{parts.port}" if parts.port else ""
        except ValueError:
            port = ""
        shown.append(f"{parts.scheme}://{parts.hostname or ''}{port}")
    return ";".join(shown)


HANDLERS: Final[dict[str, Callable[[PluginConfig, dict[str, Any]], dict[str, Any]]]] = {
    "getAvailableTemplates": get_available_templates,
    "requestMachines": request_machines,
    "requestReturnMachines": request_return_machines,
    "getRequestStatus": get_request_status,
    "getReturnRequests": get_return_requests,
}


# --- the entry point ----------------------------------------------------------------------
def _input(argv: list[str]) -> tuple[str, dict[str, Any]]:
    if not argv or argv[0] not in HANDLERS:
        raise PluginError(f"usage: hfctl hostfactory {{{','.join(OPERATIONS)}}} -f FILE")
    rest = argv[1:]
    if len(rest) != 2 or rest[0] not in ("-f", "--file"):
        raise PluginError(f"usage: hfctl hostfactory {argv[0]} -f INPUT_FILE")
    try:
        given = json.loads(Path(rest[1]).read_text())
    except OSError as exc:
        raise PluginError(f"cannot read the input file {rest[1]}: {exc.strerror}") from None
    except ValueError as exc:
        raise PluginError(f"the input file {rest[1]} is not JSON: {exc}") from None
    if not isinstance(given, dict):
        raise PluginError(f"the input file {rest[1]} must hold one JSON object")
    return argv[0], given


def _log_to(env: Mapping[str, str]) -> None:
    """One JSON object per line, to ``$HF_PROVIDER_LOGDIR/hostfactory-cqrs.log`` (LSF:
    ``$PRO_LOG_DIR``) or to stderr; stdout stays HostFactory's."""
    from shared import logs

    logdir = env.get("HF_PROVIDER_LOGDIR") or env.get("PRO_LOG_DIR")
    stream: TextIO = sys.stderr
    if logdir:
        with contextlib.suppress(OSError):
            Path(logdir).mkdir(parents=True, exist_ok=True)
            stream = open(Path(logdir) / "hostfactory-cqrs.log", "a")  # noqa: SIM115
    logs.configure(env.get("LOG_LEVEL", "INFO").upper(), stream=stream)


def main(argv: list[str], env: Mapping[str, str] | None = None) -> int:
    env = os.environ if env is None else env
    out = sys.stdout
    started = time.monotonic()
    code, answer, op = 0, {}, argv[0] if argv else "?"
    with contextlib.redirect_stdout(sys.stderr):  # whatever prints, prints to the log side
        try:
            _log_to(env)
            op, given = _input(argv)
            answer = HANDLERS[op](PluginConfig.load(env), given)
        except PluginError as exc:
            code, answer = 1, {"message": str(exc)}
        except Exception as exc:  # never a traceback where HostFactory reads JSON
            log.exception("operation failed", extra={"event": "plugin_failed", "op": op})
            code, answer = 1, {"message": f"{op} failed: {type(exc).__name__}: {exc}"}
        log.log(logging.INFO if code == 0 else logging.WARNING, "operation done", extra={
            "event": "plugin_op", "op": op, "exit": code,
            "ms": round((time.monotonic() - started) * 1e3),
            **({"reason": answer["message"]} if code else {})})
    out.write(_stdout_json(answer) + "\n")
    out.flush()
    return code


def _stdout_json(answer: dict[str, Any]) -> str:
    """The answer as ASCII JSON (HostFactory's JVM may not read stdout as UTF-8): orjson's,
    five times faster than json's for a thousand requests' 3 MB, when it is ASCII already."""
    data = orjson.dumps(answer)
    return data.decode() if data.isascii() else json.dumps(answer)
