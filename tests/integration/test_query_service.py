"""The query service in-process over a real Redis: views served as stored, errors as JSON,
ETags, stable cursors."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from starlette.testclient import TestClient

from commands_worker.adapters.projector import Projector
from commands_worker.domain.model import Machine, Request
from commands_worker.service_layer.documents import machine_doc, request_docs
from queries_service.app import create_app
from shared import keys
from shared.settings import Settings


@pytest.fixture
def client(redis_url: str) -> Iterator[TestClient]:
    settings = Settings.from_env({"REDIS_URL": redis_url})
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def put_request(r: redis.Redis, n: int, status: str = "pending", version: int = 1,
                machines: int = 0) -> None:
    request = Request(f"r{n}", "t", 5, {"a": n}, status, 1.0, 2.0, version=version, seq=n)
    ms = [Machine(f"r{n}-m{i}", f"r{n}", "running", 1.0, 1.0, 1.0, version=1)
          for i in range(machines)]
    Projector(r).project([*request_docs(request, ms), *(machine_doc(m) for m in ms)])


def test_view_is_served_as_stored_with_an_etag(client: TestClient,
                                               rclient: redis.Redis) -> None:
    put_request(rclient, 1, machines=2)
    response = client.get("/requests/r1")
    assert response.status_code == 200
    assert response.content == rclient.get("hf:v1:request:r1")
    assert [m["result"] for m in response.json()["machines"]] == ["succeed", "succeed"]
    etag = response.headers["etag"]
    assert client.get("/requests/r1", headers={"If-None-Match": etag}).status_code == 304
    put_request(rclient, 1, status="complete", version=2, machines=2)
    changed = client.get("/requests/r1", headers={"If-None-Match": etag})
    assert changed.status_code == 200 and changed.json()["status"] == "complete"


def test_paging_is_stable_while_requests_are_added(client: TestClient,
                                                   rclient: redis.Redis) -> None:
    for n in range(1, 8):
        put_request(rclient, n)
    seen: list[str] = []
    cursor = None
    added = 8
    while True:
        params = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        page = client.get("/requests", params=params).json()
        seen += [r["request_id"] for r in page["requests"]]
        put_request(rclient, added)  # a new request arrives between pages
        added += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [f"r{n}" for n in range(1, len(seen) + 1)]  # in order, no gap, no repeat
    assert len(seen) >= 7


def test_status_filter(client: TestClient, rclient: redis.Redis) -> None:
    put_request(rclient, 1, "pending")
    put_request(rclient, 2, "complete")
    page = client.get("/requests", params={"status": "complete"}).json()
    assert [r["request_id"] for r in page["requests"]] == ["r2"]


@pytest.mark.parametrize("path", ["/requests/missing", "/machines/missing",
                                  "/commands/missing", "/requests/a%2Fb", "/nowhere"])
def test_unknown_is_json_404(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"


def test_openapi_and_metrics(client: TestClient, rclient: redis.Redis) -> None:
    spec = client.get("/openapi.json").json()
    assert "/requests/{request_id}" in spec["paths"]
    assert "RequestView" in spec["components"]["schemas"]
    client.get("/requests/missing")
    metrics = client.get("/metrics").text
    assert 'hf_query_requests_total{code="404",route="get_request"} 1.0' in metrics
    from prometheus_client.parser import text_string_to_metric_families

    families = {f.name: f for f in text_string_to_metric_families(metrics)}
    assert {"hf_query_requests", "hf_query_long_polls_waiting", "hf_query_local_hits",
            "hf_query_cache_reads_primary"} <= set(families)
    [served] = [s for s in families["hf_query_requests"].samples if s.name.endswith("_total")
                and s.labels == {"route": "get_request", "code": "404"}]
    assert served.value == 1
    # No templates list in the cache yet: not ready (HostFactory would drop the provider),
    # and it says why; with the list, ready.
    unready = client.get("/readyz")
    assert unready.status_code == 503 and unready.json()["ready"] is False
    assert unready.json()["reason"].startswith("no templates loaded")
    rclient.set(keys.TEMPLATES_KEY, b'{"version":1,"templates":[{"templateId":"t"}]}')
    ready = client.get("/readyz").json()
    assert (ready["ready"], ready["reading_from"], ready["replica_configured"]) == (
        True, "primary", False)


def test_the_documented_wait_limit_is_the_enforced_one(redis_url: str) -> None:
    settings = Settings.from_env({"REDIS_URL": redis_url, "QUERY_MAX_WAIT_S": "5"})
    with TestClient(create_app(settings)) as client:
        spec = client.get("/openapi.json").json()
        [wait] = [p for p in spec["paths"]["/requests/{request_id}"]["get"]["parameters"]
                  if p["name"] == "wait"]
        assert wait["schema"]["maximum"] == 5
        refused = client.get("/requests/r1", params={"min_version": 1, "wait": 6})
        assert refused.status_code == 422
        assert refused.json()["detail"] == {"parameter": "wait",
                                            "problem": "must be an integer from 0 to 5"}


def test_unreachable_cache_is_503_not_500() -> None:
    settings = Settings.from_env({"REDIS_URL": "redis://127.0.0.1:1/0"})
    with TestClient(create_app(settings)) as client:
        response = client.get("/requests/r1")
        assert response.status_code == 503
        assert response.json()["error"] == "cache_unavailable"
        assert client.get("/readyz").status_code == 503


def test_views_parse_with_the_shared_models(client: TestClient, rclient: redis.Redis) -> None:
    from shared.views import MachineView, RequestView

    put_request(rclient, 3, machines=1)
    RequestView.model_validate(client.get("/requests/r3").json())
    MachineView.model_validate(client.get("/machines/r3-m0").json())
    assert orjson.loads(client.get("/requests/r3?include_machines=false").content).get(
        "machines") is None


def test_views_kept_in_process_follow_every_projection(client: TestClient,
                                                       rclient: redis.Redis) -> None:
    from tests.conftest import wait_for

    put_request(rclient, 9)
    wait_for(lambda: client.get("/readyz").json()["notifications_live"], 5,
             what="the service to subscribe to the projector's announcements")
    for _ in range(3):
        assert client.get("/requests/r9").json()["version"] == 1
    hits = client.get("/metrics").text
    assert "hf_query_local_hits_total 0.0" not in hits  # repeated polls served in-process
    assert "hf_query_local_hits_total " in hits
    for version in (2, 3, 4):
        put_request(rclient, 9, status="in_progress", version=version)
        wait_for(functools.partial(_has_version, client, "/requests/r9", version), 5,
                 what=f"version {version} through the in-process copy")
    assert client.get("/requests/r9?include_machines=false").json()["version"] == 4


def test_machines_of_a_request_page_in_the_order_first_reported(
        client: TestClient, rclient: redis.Redis) -> None:
    request = Request("r5", "t", 20, {}, "in_progress", 1.0, 2.0, version=1, seq=5)
    machines: list[Machine] = []

    def report_two() -> None:  # ids sort against report order on purpose
        for _ in range(2):
            machines.append(Machine(f"m{20 - len(machines):02d}", "r5", "pending", 1.0,
                                    float(len(machines)), 1.0, version=1))
        request.version += 1
        Projector(rclient).project(request_docs(request, machines))

    for _ in range(3):
        report_two()
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        page = client.get("/requests/r5/machines", params=params).json()
        seen += [m["machine_id"] for m in page["machines"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
        if len(machines) < 12:
            report_two()  # more machines are reported between pages
    assert seen == [m.machine_id for m in machines]  # report order, no gap, no repeat
    assert client.get("/requests/nope/machines").status_code == 404
    assert client.get("/requests/r5/machines", params={"cursor": "zz"}).status_code == 422


def _has_version(client: TestClient, path: str, version: int) -> bool:
    return bool(client.get(path).json()["version"] == version)


def test_a_refused_request_is_logged_with_the_pollers_correlation_id(
        client: TestClient) -> None:
    import logging

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign,assignment]
    logger = logging.getLogger("hostfactory.queries")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        bad = client.get("/requests/r1", params={"min_version": "x"},
                         headers={"X-Correlation-ID": "poll-7"})
        assert bad.status_code == 422
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    [record] = [r for r in records if getattr(r, "event", None) == "request_refused"]
    assert (record.status, record.correlation_id, record.route) == (  # type: ignore[attr-defined]
        422, "poll-7", "get_request")


def test_metrics_are_whole_for_the_host_with_several_server_processes(
        stack_env: dict[str, str], tmp_path: Path, rclient: redis.Redis) -> None:
    """QUERY_WORKERS=2: whichever process answers a scrape reports both processes' answers,
    their latency, and the long-polls each holds."""
    import asyncio
    import sys

    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    from tests.conftest import Proc, free_port, http_ok, wait_for

    put_request(rclient, 1)
    port = free_port()
    proc = Proc([sys.executable, "-m", "queries_service"],
                {**stack_env, "QUERY_PORT": str(port), "QUERY_WORKERS": "2"},
                tmp_path / "queries.log").start()
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: http_ok(f"{base}/healthz"), 30, what="the query service")

        async def load() -> None:
            async with httpx.AsyncClient(base_url=base, limits=httpx.Limits(
                    max_connections=40)) as client:
                polls = [asyncio.create_task(client.get(
                    "/requests/r1", params={"min_version": 9, "wait": 3}, timeout=10))
                    for _ in range(6)]
                # Both processes' polls are counted once they wait (not after a fixed sleep
                # that races the gauge's one-second refresh); then every scrape says so.
                for _ in range(100):
                    waiting = _sample(await client.get("/metrics"),
                                      "hf_query_long_polls_waiting")
                    if waiting == 6.0:
                        break
                    await asyncio.sleep(0.05)
                samples = [_sample(await client.get("/metrics"), "hf_query_long_polls_waiting")
                           for _ in range(6)]
                assert set(samples) == {6.0}, samples  # both processes' polls, every scrape
                for _ in range(200):
                    assert (await client.get("/requests/r1")).status_code == 200
                await asyncio.gather(*polls)

        asyncio.run(load())

        def served() -> float:
            text = httpx.get(f"{base}/metrics").text
            return sum(s.value for f in text_string_to_metric_families(text)
                       for s in f.samples if s.name == "hf_query_requests_total"
                       and s.labels.get("route") == "get_request")

        wait_for(lambda: served() == 206, 10, what="206 answers counted")
        text = httpx.get(f"{base}/metrics").text
        assert _sample_text(text, "hf_query_request_seconds_count", "get_request") == 206
    finally:
        proc.stop()


def _sample(response: object, name: str) -> float:
    return _sample_text(response.text, name)  # type: ignore[attr-defined]


def _sample_text(text: str, name: str, route: str | None = None) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == name and route in (None, s.labels.get("route")))


def _zranges(r: redis.Redis) -> int:
    stats: dict[str, Any] = r.info("commandstats")
    return int(stats.get("cmdstat_zrange", {}).get("calls", 0))


def test_a_listing_is_kept_in_the_process_until_a_request_changes(
        client: TestClient, rclient: redis.Redis) -> None:
    """A repeated listing costs no Redis round trip; any request's change is in the next."""
    from tests.conftest import wait_for

    wait_for(lambda: client.get("/readyz").json().get("notifications_live"), 10,
             what="the notification subscription")
    for n in range(1, 4):
        put_request(rclient, n)
    first = client.get("/requests", params={"limit": 50})
    before = _zranges(rclient)
    for _ in range(5):
        again = client.get("/requests", params={"limit": 50})
        assert again.content == first.content
    assert _zranges(rclient) == before  # served from the process
    put_request(rclient, 2, status="complete", version=2)
    wait_for(lambda: {r["request_id"]: r["status"] for r in client.get(
        "/requests", params={"limit": 50}).json()["requests"]}["r2"] == "complete", 5,
        what="the changed request in the listing")
    put_request(rclient, 4)
    wait_for(lambda: len(client.get("/requests", params={"limit": 50}).json()["requests"]) == 4,
             5, what="the new request in the listing")
