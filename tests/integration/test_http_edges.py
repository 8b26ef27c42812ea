"""What a hostile or broken client can do to the two HTTP services, as real server processes
(the command gateway and the query service, both on granian): oversized heads, heads and
bodies that never finish, malformed chunked bodies. Each costs only its own connection."""

from __future__ import annotations

import contextlib
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from shared.asgi import HEAD_READ_TIMEOUT_S
from tests.conftest import Proc, free_port, http_ok, wait_for

pytestmark = [pytest.mark.redis]


def _serve(module: str, port_var: str, env: dict[str, str], log: Path) -> Iterator[str]:
    port = free_port()
    proc = Proc([sys.executable, "-m", module], {**env, port_var: str(port)}, log).start()
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: http_ok(f"{url}/healthz"), 20, what=module)
    yield url
    proc.stop()


@pytest.fixture
def gateway(stack_env: dict[str, str], tmp_path: Path) -> Iterator[str]:
    yield from _serve("commands_worker.gateway", "GATEWAY_PORT", stack_env,
                      tmp_path / "gateway.log")


def _raw(url: str, data: bytes, wait_s: float = 5.0, hang_up: bool = False) -> bytes:
    """Send ``data`` as is (``hang_up``: then close our side, as a client that broke off)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=wait_s) as conn:
        conn.sendall(data)
        if hang_up:
            conn.shutdown(socket.SHUT_WR)
        answer = b""
        try:
            while chunk := conn.recv(65536):
                answer += chunk
                if b"\r\n\r\n" in answer and b"connection: close" not in answer.lower() and \
                        len(answer) > answer.index(b"\r\n\r\n") + 4:
                    break
        except (TimeoutError, ConnectionResetError):
            pass
    return answer


def test_gateway_heads_over_the_bound_are_431_and_cost_nothing_else(gateway: str) -> None:
    head = (b"POST /commands/create-request HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 200_000 +
            b"\r\n\r\n")
    assert _raw(gateway, head).startswith(b"HTTP/1.1 431")
    started = time.monotonic()
    assert http_ok(f"{gateway}/healthz") and time.monotonic() - started < 1.0


def test_half_sent_heads_and_bodies_are_closed_in_time(gateway: str, query_url: str) -> None:
    """50 connections that never finish their head, and a body that never comes: the
    heads are closed after HEAD_READ_TIMEOUT_S, the body answered 408; the service keeps
    answering everyone else meanwhile."""
    host, port = gateway.removeprefix("http://").split(":")
    stalled = []
    for _ in range(50):
        conn = socket.create_connection((host, int(port)), timeout=HEAD_READ_TIMEOUT_S + 10)
        conn.sendall(b"POST /commands/create-request HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        stalled.append(conn)
    body = socket.create_connection((host, int(port)), timeout=HEAD_READ_TIMEOUT_S + 10)
    body.sendall(b"POST /commands/create-request HTTP/1.1\r\nHost: x\r\n"
                 b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"templ")
    started = time.monotonic()
    assert http_ok(f"{gateway}/healthz")
    answer = body.recv(65536)
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert b"did not arrive within" in answer
    for conn in stalled:
        with contextlib.suppress(ConnectionResetError):  # closed, or reset: either way gone
            assert conn.recv(1024) == b""
        conn.close()
    assert time.monotonic() - started < HEAD_READ_TIMEOUT_S + 8
    body.close()


@pytest.mark.parametrize("path", ["/hostfactory/request-status",
                                  "/hostfactory/return-requests"])
def test_a_malformed_or_cut_body_is_never_taken_for_a_whole_one(
        gateway: str, query_url: str, path: str, rclient: redis.Redis) -> None:
    """Neither service reads a chunked body (411: on granian's RSGI interface a malformed or
    cut one can end quietly, and one of no declared length is not bounded before it is read),
    and a body cut short of its Content-Length is 400."""
    for url, where, expected in ((query_url, path, b"411"),
                                 (gateway, "/commands/create-request", b"411")):
        for bad, hang_up in ((b"zz\r\n{}\r\n0\r\n\r\n", False),  # not a chunk size
                             (b"10\r\n{}\r\n0\r\n\r\n", True)):  # shorter, then gone
            answer = _raw(url, f"POST {where} HTTP/1.1\r\nHost: x\r\nContent-Type: "
                          "application/json\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
                          + bad, hang_up=hang_up)
            status = answer.split(b" ", 2)[1] if answer else b""
            assert status == expected, (url, where, answer[:300])
    whole = b'{"template_id": "x86-small", "max_number": 1}'
    cut = _raw(gateway, b"POST /commands/create-request HTTP/1.1\r\nHost: x\r\nContent-Type: "
               b"application/json\r\nContent-Length: 60\r\n\r\n" + whole, hang_up=True)
    assert cut.split(b" ", 2)[1] == b"400", cut[:300]
    cut = _raw(query_url, f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
               "\r\nContent-Length: 60\r\n\r\n{\"requests\": []}".encode(), hang_up=True)
    assert cut.split(b" ", 2)[1] == b"400", cut[:300]
    assert rclient.llen("commands.requests") == 0  # nothing refused was published
    assert httpx.post(f"{query_url}{path}", json={"requests": []}, timeout=5).status_code \
        in (200, 422)
