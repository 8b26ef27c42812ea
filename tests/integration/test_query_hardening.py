"""Bearer tokens, and a property-based run against the service's own OpenAPI: whatever the
input, the answer is JSON with a 2xx, 3xx or 4xx status, never a 500."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from commands_worker.adapters.projector import Projector
from commands_worker.domain.model import Machine, Request
from commands_worker.service_layer.documents import request_docs
from queries_service.app import create_app
from queries_service.openapi import document
from shared.settings import Settings


@pytest.fixture
def client(redis_url: str) -> Iterator[TestClient]:
    projector = Projector(redis.Redis.from_url(redis_url))
    request = Request("r1", "t", 2, {}, "in_progress", 1.0, 2.0, version=2, seq=1)
    projector.project(request_docs(request, [Machine("m1", "r1", "running", 1, 1, 1, 1)]))
    settings = Settings.from_env({"REDIS_URL": redis_url, "QUERY_MAX_WAIT_S": "1"})
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def test_bearer_tokens(redis_url: str) -> None:
    settings = Settings.from_env({"REDIS_URL": redis_url, "QUERY_API_TOKENS": "alpha, beta"})
    with TestClient(create_app(settings)) as client:
        denied = client.get("/requests/r1")
        assert denied.status_code == 401 and denied.json()["error"] == "unauthorized"
        assert client.get("/requests/r1", headers={"Authorization": "Bearer gamma"}
                          ).status_code == 401
        for token in ("alpha", "beta"):
            assert client.get("/requests/r1", headers={"Authorization": f"Bearer {token}"}
                              ).status_code == 404  # authorised; simply unknown
        assert client.get("/healthz").status_code == 200  # probes stay open


_SPEC: dict[str, Any] = __import__("orjson").loads(document(max_wait_s=1))
_text = st.one_of(st.text(max_size=30), st.sampled_from(["", "0", "-1", "true", "r1", "m1",
                                                           "9" * 30, "%00", "../x", "1e9"]))


def _value(schema: dict[str, Any]) -> st.SearchStrategy[str]:
    if schema.get("type") == "integer":
        return st.one_of(st.integers(-2**40, 2**40).map(str), _text)
    return _text


@st.composite
def calls(draw: st.DrawFn) -> tuple[str, dict[str, str]]:
    path = draw(st.sampled_from(sorted(p for p, ops in _SPEC["paths"].items() if "get" in ops)))
    params: dict[str, str] = {}
    for param in _SPEC["paths"][path]["get"]["parameters"]:
        value = draw(_value(param["schema"]))
        if param["in"] == "path":
            path = path.replace("{" + param["name"] + "}", quote(value, safe="") or "x")
        elif draw(st.booleans()):
            params[param["name"]] = value
    if draw(st.booleans()):
        params[draw(st.text(min_size=1, max_size=10))] = draw(_text)
    return path, params


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(call=calls())
def test_any_input_gets_a_json_answer_never_a_500(client: TestClient,
                                                  call: tuple[str, dict[str, str]]) -> None:
    path, params = call
    response = client.get(path, params=params)
    # No templates loaded is the service's state, not the input's: HostFactory must get an
    # error then, never an empty list.
    unready = response.status_code == 503 and response.json()["error"] == "no_templates"
    assert response.status_code < 500 or unready, (path, params, response.text)
    if response.status_code == 304:
        return
    if path == "/metrics" and response.status_code == 200:
        assert response.headers["content-type"].startswith("text/plain")
        return
    assert response.headers["content-type"].startswith("application/json")
    response.json()


_json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(),
              st.text(max_size=20)),
    lambda inner: st.one_of(st.lists(inner, max_size=5),
                            st.dictionaries(st.sampled_from(
                                ["requests", "machines", "requestId", "name", "machineId",
                                 "x"]), inner, max_size=4)),
    max_leaves=20)


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(["/hostfactory/request-status", "/hostfactory/return-requests"]),
       body=st.one_of(st.binary(max_size=200),
                      _json_values.map(lambda v: __import__("json").dumps(v).encode())))
def test_any_body_gets_a_json_answer_never_a_500(client: TestClient, path: str,
                                                 body: bytes) -> None:
    response = client.post(path, content=body)
    assert response.status_code in (200, 400, 413), (path, body, response.text)
    answer = response.json()
    if response.status_code == 200:
        assert isinstance(answer, dict) and isinstance(answer["requests"], list)


def _raw_exchange(url: str, payload: bytes, chunks: int = 1) -> bytes:
    """Send ``payload`` (in ``chunks`` pieces) on a plain socket; what comes back."""
    import socket

    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        step = max(1, len(payload) // chunks)
        try:
            for start in range(0, len(payload), step):
                sock.sendall(payload[start:start + step])
        except (BrokenPipeError, ConnectionResetError):
            pass  # the service hung up on us: what it said first is what counts
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
        return received


@pytest.fixture(params=["granian", "uvicorn"])
def served_url(request: pytest.FixtureRequest, stack_env: dict[str, str],
               tmp_path: Path) -> Iterator[tuple[str, str]]:
    """The query service on each HTTP server it can run on (``QUERY_SERVER``)."""
    from tests.conftest import Proc, free_port, http_ok, wait_for

    port = free_port()
    proc = Proc([sys.executable, "-m", "queries_service"],
                {**stack_env, "QUERY_PORT": str(port), "QUERY_SERVER": request.param},
                tmp_path / "queries.log").start()
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: http_ok(f"{url}/healthz"), 20, what="the query service")
    yield request.param, url
    proc.stop()


def test_an_endless_request_head_is_cut_off(served_url: tuple[str, str]) -> None:
    import time

    import httpx

    server, query_url = served_url
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 4_000_000 + b"\r\n\r\n"
    started = time.monotonic()
    answer = _raw_exchange(query_url, head, chunks=200)
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    if server == "uvicorn":  # granian's parser answers without a body
        assert b'"error":"request_head_too_large"' in answer
    assert time.monotonic() - started < 5
    assert httpx.get(f"{query_url}/healthz", timeout=2).status_code == 200


def test_a_request_the_parser_refuses_gets_a_400(served_url: tuple[str, str]) -> None:
    import httpx

    server, query_url = served_url
    answer = _raw_exchange(query_url, b"GARBAGE\x01 / HTTP/9.9\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]
    if server == "uvicorn":
        status_line, _, body = answer.partition(b"\r\n\r\n")
        assert b"content-type: application/json" in status_line
        assert __import__("orjson").loads(body)["error"] == "bad_request"
    assert httpx.get(f"{query_url}/healthz", timeout=2).status_code == 200
