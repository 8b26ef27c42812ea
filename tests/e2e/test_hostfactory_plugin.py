"""The five provider-plugin scripts driven exactly as HostFactory drives them: an input file
passed with ``-f``, HostFactory's environment (settings from ``$HF_PROVIDER_CONFDIR``, logs
to ``$HF_PROVIDER_LOGDIR``), stdout parsed as one JSON object, the exit code checked; over
real Redis and real worker, query service and simulator processes."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Proc, free_port, wait_for
from tests.e2e.conftest import SCRIPTS, HostFactory, reading_the_feed


@pytest.fixture
def simulator(stack_env: dict[str, str], query_url: str, tmp_path: Path) -> Any:
    proc = Proc([sys.executable, "-m", "hfctl", "simulate", "--delay", "0.2"],
                {**stack_env, "QUERY_URL": query_url}, tmp_path / "simulator.log").start()
    reading_the_feed(stack_env["REDIS_URL"], "simulator")
    yield proc
    proc.stop()


def report(producer: Any, machine_id: str, status: str, **kwargs: Any) -> None:
    producer.send_task("commands.update_machine_status", queue="commands.machines",
                       kwargs={"machine_id": machine_id, "status": status,
                               "observed_at": time.time(), **kwargs})


@pytest.mark.parametrize("broker_kind", ["redis", "rabbitmq"], indirect=True)
def test_a_whole_cycle_through_the_five_scripts(hostfactory: HostFactory, worker: Proc,
                                                simulator: Proc, producer: Any,
                                                tmp_path: Path) -> None:
    templates = hostfactory.ok("getAvailableTemplates", {})["templates"]
    small = next(t for t in templates if t["templateId"] == "x86-small")
    assert all(isinstance(v, list) and len(v) == 2 and isinstance(v[1], str)
               for v in small["attributes"].values())
    accepted = hostfactory.ok("requestMachines",
                              {"template": {"templateId": "x86-small", "machineCount": 3}})
    request_id = accepted["requestId"]
    assert request_id.startswith("req-")
    done = hostfactory.until(request_id, "complete")
    machines = done["machines"]
    assert [m["result"] for m in machines] == ["succeed"] * 3
    assert all(m["name"] and m["privateIpAddress"] for m in machines)
    first, second, third = machines
    returned = hostfactory.ok("requestReturnMachines", {"machines": [
        {"name": first["name"], "machineId": first["machineId"]},
        {"name": second["name"]}]})  # by host name only
    ret = hostfactory.until(returned["requestId"], "complete")  # the simulator terminates
    assert [(m["result"], m["status"]) for m in ret["machines"]] == [
        ("succeed", "terminated")] * 2
    listed = {"machines": [{"name": third["name"], "machineId": third["machineId"]}]}
    assert hostfactory.ok("getReturnRequests", listed)["requests"] == []
    # A spot interruption notice: about 120 s left.
    report(producer, third["machineId"], "running", metadata={"reclaim_at": time.time() + 120})
    notice = wait_for(lambda: hostfactory.ok("getReturnRequests", listed)["requests"],
                      20, every_s=0.2, what="the reclaim notice")
    assert notice[0]["machine"] == third["name"] and 110 <= notice[0]["gracePeriod"] <= 120
    # Terminated out of band (a console termination): gone, grace period 0.
    report(producer, third["machineId"], "terminated")
    wait_for(lambda: hostfactory.ok("getReturnRequests", listed)["requests"] == [
        {"machine": third["name"], "gracePeriod": 0}], 20, every_s=0.2, what="termination")
    log = (tmp_path / "log" / "hostfactory-cqrs.log").read_text()
    assert '"op": "requestMachines"' in log and '"exit": 0' in log


def test_deadlines_end_requests(hostfactory: HostFactory, start_worker: Callable[..., Proc],
                                producer: Any) -> None:
    start_worker(REQUEST_TIMEOUT_S="3")
    silent = hostfactory.ok("requestMachines", {"template": [
        {"templateId": "x86-small", "machineCount": 2}]})["requestId"]
    partial = hostfactory.ok("requestMachines",
                             {"template": {"templateId": "x86-small", "machineCount": 3}})
    partial_id = partial["requestId"]
    for n in range(2):
        report(producer, f"{partial_id}-m{n}", "running", request_id=partial_id,
               metadata={"name": f"h{n}.example", "private_ip": f"10.0.0.{n}"})
    assert hostfactory.status(silent)[0]["status"] == "running"
    nothing = hostfactory.until(silent, "complete_with_error", timeout_s=15)
    assert nothing["machines"] == [] and "deadline passed" in nothing["message"]
    some = hostfactory.until(partial_id, "complete_with_error", timeout_s=15)
    assert [m["result"] for m in some["machines"]] == ["succeed", "succeed"]
    assert "2 of 3" in some["message"]
    # A machine launched after the deadline is recorded, as failed, launched too late.
    report(producer, f"{partial_id}-m2", "running", request_id=partial_id,
           metadata={"name": "h2.example", "private_ip": "10.0.0.2"})
    late = wait_for(lambda: [m for m in hostfactory.status(partial_id)[0]["machines"]
                             if m["machineId"].endswith("-m2")], 20, every_s=0.2,
                    what="the late machine")
    assert late[0]["result"] == "fail" and "after the request's deadline" in late[0]["message"]
    unknown = hostfactory.status("req-nobody-knows")[0]
    assert (unknown["status"], unknown["machines"]) == ("complete_with_error", [])


def test_refusals_are_one_object_and_exit_1(hostfactory: HostFactory, worker: Proc) -> None:
    code, answer = hostfactory.call("requestMachines",
                                    {"template": {"templateId": "nope", "machineCount": 1}})
    assert code == 1 and "unknown template 'nope'" in answer["message"]
    code, answer = hostfactory.call("requestMachines",
                                    {"template": {"templateId": "x86-small", "machineCount": 11}})
    assert code == 1 and "maxNumber 10" in answer["message"]
    code, answer = hostfactory.call("requestReturnMachines", {"machines": [{"machineId": "x"}]})
    assert code == 1 and "host name" in answer["message"]
    # LOG_LEVEL=DEBUG: still exactly one object on stdout (call() checks it).
    assert hostfactory.ok("getRequestStatus", {"requests": {"requestId": "req-x"}},
                          LOG_LEVEL="DEBUG")["requests"][0]["requestId"] == "req-x"
    nowhere = f"http://127.0.0.1:{free_port()}"
    code, answer = hostfactory.call("getRequestStatus", {"requests": []}, QUERY_URL=nowhere)
    assert code == 1 and "unreachable" in answer["message"]
    code, answer = hostfactory.call(
        "requestReturnMachines", {"machines": [{"name": "h1"}]},
        BROKER_URL=f"redis://127.0.0.1:{free_port()}/0")
    assert code == 1 and "broker" in answer["message"]
    path = hostfactory.tmp / "broken.json"
    path.write_text("{not json")
    done = subprocess.run([str(SCRIPTS / "getReturnRequests.sh"), "-f", str(path)],
                          env=hostfactory.env, capture_output=True, timeout=30, check=False)
    assert done.returncode == 1 and "not JSON" in json.loads(done.stdout)["message"]


def test_a_missing_hfctl_is_still_one_object_and_exit_1(tmp_path: Path) -> None:
    """A script whose hfctl cannot be found (not installed, a wrong HFCQRS_HFCTL) answers
    HostFactory as any other failure does, not with an empty stdout and the shell's 127."""
    (tmp_path / "in.json").write_text("{}")
    scripts = sorted(SCRIPTS.glob("*.sh"))
    assert len(scripts) == 5
    for script in scripts:
        done = subprocess.run([str(script), "-f", str(tmp_path / "in.json")],
                              env={"PATH": "/usr/bin:/bin",
                                   "HFCQRS_HFCTL": str(tmp_path / "nowhere")},
                              capture_output=True, timeout=30, check=False)
        lines = done.stdout.decode().splitlines()
        assert (done.returncode, len(lines)) == (1, 1), (script.name, done)
        assert "hfctl not found" in json.loads(lines[0])["message"]
        assert b"hfctl not found" in done.stderr


def test_the_http_timeout_is_a_deadline_for_the_whole_call(hostfactory: HostFactory) -> None:
    """A server that answers one byte a second: the script gives up by HF_CQRS_HTTP_TIMEOUT_S
    (3 s here), with one JSON object and exit 1, not after every byte arrived."""
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def trickle() -> None:
        server.settimeout(0.5)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.recv(65536)
                for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 40\r\n\r\n" + b" " * 40:
                    if stop.wait(1.0):
                        break
                    try:
                        conn.sendall(bytes([byte]))
                    except OSError:
                        break

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.getsockname()[1]}"
    try:
        started = time.monotonic()
        code, answer = hostfactory.call("getRequestStatus", {"requests": [{"requestId": "r"}]},
                                        QUERY_URL=url, HF_CQRS_HTTP_TIMEOUT_S="3")
        took = time.monotonic() - started
    finally:
        stop.set()
        thread.join(5)
        server.close()
    assert code == 1 and "unreachable" in answer["message"], answer
    assert "HF_CQRS_HTTP_TIMEOUT_S" in answer["message"]
    assert took < 5.0, took


def test_the_sending_scripts_through_the_gateway(stack_env: dict[str, str], query_url: str,
                                                 worker: Proc, simulator: Proc,
                                                 hostfactory: HostFactory,
                                                 tmp_path: Path) -> None:
    """With GATEWAY_URL the sending scripts POST to the command gateway: a request and a
    return go through to `complete`; the gateway's refusal comes back as the script's one
    JSON object (exit 1) with the models' words; a gateway with tokens needs the plugin's."""
    from tests.conftest import http_ok

    port = free_port()
    gateway = Proc([sys.executable, "-m", "commands_worker.gateway"],
                   {**stack_env, "GATEWAY_PORT": str(port), "QUERY_URL": query_url,
                    "GATEWAY_API_TOKENS": "gw-secret"}, tmp_path / "gateway.log").start()
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: http_ok(f"{url}/healthz"), 20, what="the gateway")
    via = {"GATEWAY_URL": url, "GATEWAY_API_TOKEN": "gw-secret",
           "BROKER_URL": "redis://127.0.0.1:1/0"}  # the broker is not used at all
    try:
        accepted = hostfactory.ok("requestMachines", {
            "template": {"templateId": "x86-small", "machineCount": 2}, "rc_account": "a1"},
            **via)
        done = hostfactory.until(accepted["requestId"], "complete")
        assert [m["result"] for m in done["machines"]] == ["succeed"] * 2
        returned = hostfactory.ok("requestReturnMachines", {"machines": [
            {"name": m["name"], "machineId": m["machineId"]} for m in done["machines"]]}, **via)
        hostfactory.until(returned["requestId"], "complete")
        code, answer = hostfactory.call("requestMachines", {
            "template": {"templateId": "x86-small", "machineCount": 1},
            "rc_account": "x" * 20_000}, **via)
        assert code == 1 and answer["message"].startswith("refused before sending: attributes")
        code, answer = hostfactory.call("requestReturnMachines", {"machines": [{"name": "h"}]},
                                        **{**via, "GATEWAY_API_TOKEN": "wrong"})
        assert code == 1 and "answered 401" in answer["message"]
    finally:
        gateway.stop()
    code, answer = hostfactory.call("requestReturnMachines", {"machines": [{"name": "h"}]},
                                    **via)
    assert code == 1 and f"command gateway at {url} did not take" in answer["message"]
