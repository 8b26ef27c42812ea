"""The query service as it is served, on granian's RSGI interface (the default: the fast path
answers kept views itself, the rest crosses a bridge to the ASGI app) and on uvicorn (ASGI):
the same answers either way, tokens kept on the fast path too."""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
import redis

from tests.conftest import Proc, free_port, http_ok, wait_for
from tests.integration.test_query_service import put_request

pytestmark = [pytest.mark.redis]
TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(params=["granian", "uvicorn"])
def served(request: pytest.FixtureRequest, stack_env: dict[str, str],
           tmp_path: Path) -> Iterator[tuple[str, Proc]]:
    port = free_port()
    proc = Proc([sys.executable, "-m", "queries_service"],
                {**stack_env, "QUERY_PORT": str(port), "QUERY_SERVER": request.param,
                 "QUERY_API_TOKENS": TOKEN}, tmp_path / "queries.log").start()
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: http_ok(f"{url}/healthz"), 20, what="the query service")
    wait_for(lambda: httpx.get(f"{url}/readyz", timeout=2).json().get("notifications_live"),
             10, what="the notifications")
    yield url, proc
    proc.stop()


def test_kept_views_are_answered_only_to_a_token_holder(
        served: tuple[str, Proc], rclient: redis.Redis) -> None:
    """The second read of a view comes from the process's kept copy (no Redis round trip):
    it still needs the token, and says the same as the first (ETag, 304, HEAD)."""
    url, _ = served
    put_request(rclient, 1, machines=3)
    first = httpx.get(f"{url}/requests/r1", headers=AUTH)
    assert first.status_code == 200 and first.content == rclient.get("hf:v1:request:r1")
    before = rclient.info("commandstats").get("cmdstat_get", {}).get("calls", 0)
    for _ in range(5):
        again = httpx.get(f"{url}/requests/r1", headers=AUTH)
        assert (again.status_code, again.content) == (200, first.content)
        assert again.headers["etag"] == first.headers["etag"]
        assert again.headers["content-type"] == "application/json"
    assert rclient.info("commandstats").get("cmdstat_get", {}).get("calls", 0) == before
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        refused = httpx.get(f"{url}/requests/r1", headers=headers)
        assert refused.status_code == 401, headers
        assert refused.json()["error"] == "unauthorized" and r"machines" not in refused.text
    same = httpx.get(f"{url}/requests/r1",
                     headers={**AUTH, "If-None-Match": first.headers["etag"]})
    assert (same.status_code, same.content) == (304, b"")
    head = httpx.head(f"{url}/requests/r1", headers=AUTH)
    assert (head.status_code, head.content) == (200, b"")
    assert int(head.headers["content-length"]) == len(first.content)
    summary = httpx.get(f"{url}/requests/r1?include_machines=false", headers=AUTH)
    assert summary.status_code == 200 and "machines" not in summary.json()
    assert httpx.get(f"{url}/healthz").status_code == 200  # open without a token


def test_a_long_poll_is_answered_when_the_view_moves(
        served: tuple[str, Proc], rclient: redis.Redis) -> None:
    url, _ = served
    put_request(rclient, 2)

    async def poll() -> httpx.Response:
        async with httpx.AsyncClient(base_url=url, headers=AUTH) as client:
            waiting = asyncio.create_task(client.get(
                "/requests/r2", params={"min_version": 2, "wait": 10}, timeout=20))
            await asyncio.sleep(0.3)
            assert not waiting.done()
            started = time.monotonic()
            put_request(rclient, 2, status="complete", version=2)
            answer = await waiting
            assert time.monotonic() - started < 1.0
            return answer

    answer = asyncio.run(poll())
    assert answer.status_code == 200 and answer.json()["version"] == 2


def test_every_ending_of_a_long_poll_is_answered_alike(
        served: tuple[str, Proc], rclient: redis.Redis) -> None:
    """On granian a well-formed long-poll is answered by the service itself, not across the
    bridge: the same answers as the ASGI app gives on uvicorn, whichever way it ends."""
    url, _ = served
    put_request(rclient, 5, machines=2)
    tag = httpx.get(f"{url}/requests/r5", headers=AUTH).headers["etag"]
    poll = f"{url}/requests/r5?min_version=2&wait=1"
    assert httpx.get(poll).status_code == 401
    assert httpx.get(poll, headers={"Authorization": "Bearer wrong"}).status_code == 401
    started = time.monotonic()
    stale = httpx.get(poll, headers=AUTH, timeout=10)  # the wait runs out: the view as it is
    assert 0.9 < time.monotonic() - started < 3
    assert (stale.status_code, stale.headers["etag"]) == (200, tag)
    assert stale.content == rclient.get("hf:v1:request:r5")
    unchanged = httpx.get(poll, headers={**AUTH, "If-None-Match": tag}, timeout=10)
    assert (unchanged.status_code, unchanged.content) == (304, b"")
    unknown = httpx.get(f"{url}/requests/nope?wait=1&min_version=1", headers=AUTH, timeout=10)
    assert unknown.status_code == 404
    assert unknown.json() == {"error": "not_found", "detail": "no request 'nope'"}
    put_request(rclient, 5, status="complete", version=3, machines=2)
    summary = httpx.get(f"{url}/requests/r5?include_machines=false&min_version=3&wait=5",
                        headers=AUTH, timeout=10)
    assert summary.status_code == 200 and summary.json()["version"] == 3
    assert "machines" not in summary.json()
    for query, name in (("min_version=1&wait=99999", "wait"), ("min_version=-1&wait=1",
                                                             "min_version"),
                        ("min_version=1&wait=1&include_machines=maybe", "include_machines")):
        refused = httpx.get(f"{url}/requests/r5?{query}", headers=AUTH, timeout=10)
        assert refused.status_code == 422, query
        assert refused.json()["detail"]["parameter"] == name
    metrics = httpx.get(f"{url}/metrics", headers=AUTH).text
    assert 'hf_query_requests_total{code="304",route="get_request"}' in metrics


def test_bodies_errors_and_what_else_crosses_the_bridge(
        served: tuple[str, Proc], rclient: redis.Redis) -> None:
    url, _ = served
    put_request(rclient, 3)
    status = httpx.post(f"{url}/hostfactory/request-status", headers=AUTH,
                        json={"requests": [{"requestId": "r3"}, {"requestId": "nope"}]})
    assert status.status_code == 200
    assert [r["requestId"] for r in status.json()["requests"]] == ["r3", "nope"]
    assert httpx.post(f"{url}/hostfactory/request-status",
                      json={"requests": []}).status_code == 401
    bad = httpx.post(f"{url}/hostfactory/request-status", headers=AUTH,
                     content=b'{"requests": [')
    assert bad.status_code == 400 and bad.json()["error"] == "invalid_body"

    def chunks() -> Iterator[bytes]:
        yield b'{"requests": []}'

    chunked = httpx.post(f"{url}/hostfactory/request-status", headers=AUTH, content=chunks())
    assert chunked.status_code == 411 and chunked.json()["error"] == "length_required"
    missing = httpx.get(f"{url}/nowhere", headers=AUTH)
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"
    assert httpx.delete(f"{url}/requests/r3", headers=AUTH).status_code == 405
    bad_param = httpx.get(f"{url}/requests/r3?min_version=x", headers=AUTH)
    assert bad_param.status_code == 422 and bad_param.json()["error"] == "invalid_parameter"
    metrics = httpx.get(f"{url}/metrics", headers=AUTH)
    assert metrics.status_code == 200 and b"hf_query_requests_total" in metrics.content
    assert orjson.loads(httpx.get(f"{url}/openapi.json", headers=AUTH).content)["paths"]


@pytest.mark.parametrize("served", ["granian"], indirect=True)
def test_a_client_that_hangs_up_on_a_long_poll_costs_nothing(
        served: tuple[str, Proc], rclient: redis.Redis) -> None:
    """Fifty polls opened and dropped: the service stops holding them at once (granian, the
    default server; on uvicorn a dropped poll is held until its wait runs out), and answers
    on."""
    url, _ = served
    put_request(rclient, 4)
    host, port = url.removeprefix("http://").split(":")
    request = (f"GET /requests/r4?min_version=9&wait=30 HTTP/1.1\r\nHost: x\r\n"
               f"Authorization: Bearer {TOKEN}\r\n\r\n").encode()
    conns = [socket.create_connection((host, int(port))) for _ in range(50)]
    for conn in conns:
        conn.sendall(request)

    def waiting() -> float:
        text = httpx.get(f"{url}/metrics", headers=AUTH).text
        return sum(float(line.split()[-1]) for line in text.splitlines()
                   if line.startswith("hf_query_long_polls_waiting"))

    wait_for(lambda: waiting() == 50, 10, what="50 polls waiting")
    for conn in conns:
        conn.close()
    wait_for(lambda: waiting() == 0, 10, what="the dropped polls let go")
    assert httpx.get(f"{url}/requests/r4", headers=AUTH).status_code == 200


def test_the_service_stops_cleanly(served: tuple[str, Proc]) -> None:
    """SIGTERM runs the app's shutdown (on RSGI: ``__rsgi_del__``) and the process ends
    (granian with 0; uvicorn raises the signal again once it has shut down)."""
    _, proc = served
    proc.stop()
    assert proc.proc is not None and proc.proc.returncode in (0, -signal.SIGTERM)
    assert "Traceback" not in proc.output()


@pytest.mark.parametrize("server", ["granian", "uvicorn"])
def test_a_long_poll_with_no_redis_is_a_503_and_said_in_the_log(
        server: str, stack_env: dict[str, str], tmp_path: Path) -> None:
    port = free_port()
    proc = Proc([sys.executable, "-m", "queries_service"],
                {**stack_env, "REDIS_URL": "redis://127.0.0.1:1/0", "QUERY_PORT": str(port),
                 "QUERY_SERVER": server}, tmp_path / "queries.log").start()
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: http_ok(f"{url}/healthz"), 20, what="the query service")
        answer = httpx.get(f"{url}/requests/r1?min_version=1&wait=1",
                           headers={"X-Correlation-ID": "poll-9"}, timeout=10)
        assert answer.status_code == 503
        assert answer.json() == {"error": "cache_unavailable",
                                 "detail": "the read cache does not answer"}
        wait_for(lambda: "poll-9" in proc.output(), 5, what="the refusal in the log")
        [line] = [said for said in proc.output().splitlines() if "poll-9" in said]
        said = orjson.loads(line)
        assert (said["event"], said["status"], said["route"]) == (
            "request_refused", 503, "get_request")
    finally:
        proc.stop()
