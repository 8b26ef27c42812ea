"""An outside producer (a plain Celery app, nothing imported from this project) drives the
flow; an HTTP client polls the query service. Real Redis, real worker, real service."""

from __future__ import annotations

from typing import Any

import httpx

from tests.conftest import Proc, wait_for

CREATE, UPDATE = "commands.create_request", "commands.update_machine_status"
REQUESTS_Q, MACHINES_Q = "commands.requests", "commands.machines"


def poll(url: str, until: Any = None, timeout_s: float = 20) -> dict[str, Any]:
    def fetch() -> dict[str, Any] | None:
        response = httpx.get(url, timeout=5)
        if response.status_code != 200:
            return None
        body: dict[str, Any] = response.json()
        return body if until is None or until(body) else None

    result: dict[str, Any] = wait_for(fetch, timeout_s, what=url)
    return result


def test_templates_listing(worker: Proc, query_url: str) -> None:
    everything = httpx.get(f"{query_url}/templates").json()
    assert everything["total"] == 3
    page = httpx.get(f"{query_url}/templates", params={"limit": 1, "offset": 1}).json()
    assert page["total"] == 3 and len(page["templates"]) == 1
    assert page["templates"][0] == everything["templates"][1]
    arm = httpx.get(f"{query_url}/templates", params={"type": "ARM64"}).json()
    assert [t["templateId"] for t in arm["templates"]] == ["arm-medium"] and arm["total"] == 1
    by_id = httpx.get(f"{query_url}/templates", params={"templateId": "x86-large"}).json()
    assert by_id["templates"][0]["maxNumber"] == 50


def test_request_lifecycle_from_an_outside_producer(worker: Proc, query_url: str,
                                                    producer: Any) -> None:
    sent = producer.send_task(CREATE, kwargs={"template_id": "x86-small", "max_number": 2},
                              queue=REQUESTS_Q)
    request_url = f"{query_url}/requests/req-{sent.id}"
    view = poll(request_url)
    assert view["status"] == "pending" and view["machines"] == [] and view["version"] == 1

    for machine, status in (("e2e-m1", "pending"), ("e2e-m2", "pending"),
                            ("e2e-m1", "running"), ("e2e-m2", "failed")):
        producer.send_task(UPDATE, kwargs={"machine_id": machine, "status": status,
                                           "request_id": f"req-{sent.id}",
                                           "metadata": {"private_ip": "192.0.2.7"}},
                           queue=MACHINES_Q)
    view = poll(request_url, until=lambda v: v["status"] == "complete_with_error")
    assert {m["machine_id"]: m["result"] for m in view["machines"]} == {
        "e2e-m1": "succeed", "e2e-m2": "fail"}
    assert view["version"] == 5
    machine = httpx.get(f"{query_url}/machines/e2e-m1").json()
    assert (machine["status"], machine["result"], machine["private_ip"]) == (
        "running", "succeed", "192.0.2.7")
    outcome = httpx.get(f"{query_url}/commands/{sent.id}").json()
    assert outcome["outcome"] == "applied" and outcome["request_id"] == f"req-{sent.id}"
    summary = httpx.get(request_url, params={"include_machines": "false"}).json()
    assert "machines" not in summary and summary["machine_count"] == 2


def test_complete_when_every_machine_runs(worker: Proc, query_url: str, producer: Any) -> None:
    sent = producer.send_task(CREATE, kwargs={"template_id": "x86-small", "max_number": 2,
                                              "request_id": "mine-1"}, queue=REQUESTS_Q)
    for machine in ("ok-1", "ok-2"):
        producer.send_task(UPDATE, kwargs={"machine_id": machine, "status": "running",
                                           "request_id": "mine-1"}, queue=MACHINES_Q)
    view = poll(f"{query_url}/requests/mine-1", until=lambda v: v["status"] == "complete")
    assert [m["result"] for m in view["machines"]] == ["succeed", "succeed"]
    assert httpx.get(f"{query_url}/commands/{sent.id}").json()["request_id"] == "mine-1"


def test_unknown_ids_are_json_404(worker: Proc, query_url: str) -> None:
    for path in ("/requests/nope", "/machines/nope", "/commands/nope", "/requests/%20x"):
        response = httpx.get(f"{query_url}{path}")
        assert response.status_code == 404, path
        assert response.headers["content-type"] == "application/json"
        assert response.json()["error"] == "not_found"


def test_refused_commands_are_explained_and_later_ones_apply(worker: Proc, query_url: str,
                                                             producer: Any) -> None:
    refused = {
        "unknown template": producer.send_task(
            CREATE, kwargs={"template_id": "gpu-huge", "max_number": 1}, queue=REQUESTS_Q),
        "over maxNumber": producer.send_task(
            CREATE, kwargs={"template_id": "x86-small", "max_number": 11}, queue=REQUESTS_Q),
        "bad type": producer.send_task(
            CREATE, kwargs={"template_id": "x86-small", "max_number": "two"},
            queue=REQUESTS_Q),
        "unknown field": producer.send_task(
            CREATE, kwargs={"template_id": "x86-small", "max_number": 1, "zone": "a"},
            queue=REQUESTS_Q),
        "no request": producer.send_task(
            UPDATE, kwargs={"machine_id": "lost-1", "status": "running"}, queue=MACHINES_Q),
    }
    good = producer.send_task(CREATE, kwargs={"template_id": "x86-small", "max_number": 1},
                              queue=REQUESTS_Q)
    reasons = {}
    for what, result in refused.items():
        outcome = poll(f"{query_url}/commands/{result.id}")
        assert outcome["outcome"] == "rejected", what
        reasons[what] = outcome["reason"]
    assert "template_not_found" in reasons["unknown template"]
    assert "max_number_exceeded" in reasons["over maxNumber"]
    assert "max_number" in reasons["bad type"]
    assert "zone" in reasons["unknown field"]
    assert "request_id is required" in reasons["no request"]
    assert poll(f"{query_url}/commands/{good.id}")["outcome"] == "applied"
    producer.send_task(UPDATE, kwargs={"machine_id": "late-1", "status": "running",
                                       "request_id": f"req-{good.id}"}, queue=MACHINES_Q)
    poll(f"{query_url}/requests/req-{good.id}", until=lambda v: v["status"] == "complete")


def test_bad_parameters_are_json_422(worker: Proc, query_url: str) -> None:
    for path in ("/requests?limit=0", "/requests?limit=abc", "/requests?status=lost",
                 "/requests?cursor=%%%", "/templates?offset=-1",
                 "/requests/x?include_machines=maybe"):
        response = httpx.get(f"{query_url}{path}")
        assert response.status_code == 422, path
        assert response.json()["error"] == "invalid_parameter"
