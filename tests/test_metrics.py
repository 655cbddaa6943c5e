"""GET /metrics after real traffic through the ASGI app (adaptations, single and concurrent predictions,
errors, a short job): parsed with prometheus-client's own parser, every series counts exactly what was done,
per route template and status, with no tenant data in any label."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from app.config import Settings
from app.main import create_app
from tests.conftest import http_to, sinusoid_only
from tests.test_jobs import SHORT, WAIT_SECONDS
from tests.test_serving import sinusoid

pytestmark = pytest.mark.anyio

ADAPTS, STEPS, CONCURRENT, ITERATIONS = 3, 4, 16, 20
HTTP = "metaserve_http_request_duration_seconds"


@pytest.fixture(scope="module")
async def service(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[FastAPI]:
    root = tmp_path_factory.mktemp("metrics")
    app = create_app(Settings(data_dir=root / "data", models_dir=sinusoid_only(root)))
    async with app.router.lifespan_context(app):
        yield app


@pytest.fixture(scope="module")
async def scraped(service: FastAPI) -> dict[str, list[Sample]]:
    """The samples of every family by name, scraped once after the traffic below."""
    async with http_to(service) as http:
        sessions = []
        for seed in range(ADAPTS):
            x, y, _, _ = sinusoid(seed)
            answer = await http.post("/adapt", json={"support": {"x": x, "y": y}, "steps": STEPS})
            sessions.append(answer.raise_for_status().json()["session_id"])
        query = {"session_id": sessions[0], "x": [0.5, 1.5]}
        assert (await http.post("/predict", json=query)).status_code == 200
        answers = await asyncio.gather(*(http.post("/predict", json=query) for _ in range(CONCURRENT)))
        assert [a.status_code for a in answers] == [200] * CONCURRENT
        assert (await http.get(f"/sessions/{sessions[1]}")).status_code == 200
        assert (await http.get("/no/such/path")).status_code == 404
        assert (await http.post("/adapt", json={"support": {"x": [1.0]}})).status_code == 422
        bad_json = await http.post("/adapt", content=b"{", headers={"Content-Type": "application/json"})
        assert bad_json.status_code in (400, 422)
        await _short_job(http)
        text = (await http.get("/metrics")).raise_for_status().text
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


async def _short_job(http: httpx.AsyncClient) -> None:
    spec = {"name": "metrics-sine", "iterations": ITERATIONS, **SHORT}
    job = (await http.post("/jobs", json=spec)).raise_for_status().json()
    deadline = time.monotonic() + WAIT_SECONDS
    while (state := (await http.get(f"/jobs/{job['job_id']}")).json()["state"]) in ("queued", "running"):
        assert time.monotonic() < deadline, "the job did not finish"
        await asyncio.sleep(0.5)
    assert state == "succeeded"


def value(samples: list[Sample], name: str, **labels: str) -> float:
    """The value of the one sample ``name`` whose labels include ``labels``."""
    (found,) = [s.value for s in samples if s.name == name and labels.items() <= s.labels.items()]
    return found


def requests(scraped: dict[str, list[Sample]], method: str, route: str, status: int) -> float:
    """Requests counted with these labels (0 when none was)."""
    labels = {"method": method, "route": route, "status": str(status)}
    return sum(
        s.value for s in scraped[HTTP] if s.name == f"{HTTP}_count" and labels.items() <= s.labels.items()
    )


async def test_requests_are_counted_per_method_route_template_and_status(
    scraped: dict[str, list[Sample]],
) -> None:
    assert requests(scraped, "POST", "/adapt", 200) == ADAPTS
    assert requests(scraped, "POST", "/predict", 200) == 1 + CONCURRENT
    assert requests(scraped, "GET", "/sessions/{session_id}", 200) == 1
    assert requests(scraped, "GET", "unmatched", 404) == 1
    assert requests(scraped, "POST", "/adapt", 422) + requests(scraped, "POST", "/adapt", 400) == 2
    assert requests(scraped, "POST", "/jobs", 201) == 1
    latencies = [s for s in scraped[HTTP] if s.name == f"{HTTP}_bucket" and s.labels["route"] == "/adapt"]
    assert {s.labels["le"] for s in latencies} >= {"0.005", "+Inf"}


async def test_batches_adaptations_and_the_session_cache_are_observed(
    scraped: dict[str, list[Sample]],
) -> None:
    sizes = scraped["metaserve_batch_size"]
    assert value(sizes, "metaserve_batch_size_sum", batcher="predict") == 1 + CONCURRENT
    batches = value(sizes, "metaserve_batch_size_count", batcher="predict")
    alone = value(sizes, "metaserve_batch_size_bucket", batcher="predict", le="1.0")
    assert alone < batches <= CONCURRENT, "the concurrent predictions ran in fewer, larger batches"
    assert value(sizes, "metaserve_batch_size_sum", batcher="adapt") == ADAPTS
    steps = scraped["metaserve_adapt_inner_steps"]
    assert value(steps, "metaserve_adapt_inner_steps_count") == ADAPTS
    assert value(steps, "metaserve_adapt_inner_steps_sum") == ADAPTS * STEPS
    assert value(scraped["metaserve_adapt_duration_seconds"], "metaserve_adapt_duration_seconds_sum") > 0
    cache = "metaserve_session_cache"
    assert value(scraped[f"{cache}_hits"], f"{cache}_hits_total", tier="device") >= 2 + CONCURRENT
    assert value(scraped[f"{cache}_entries"], f"{cache}_entries", tier="device") == ADAPTS
    assert value(scraped[f"{cache}_bytes"], f"{cache}_bytes", tier="device") > 0
    assert value(scraped[f"{cache}_evictions"], f"{cache}_evictions_total", tier="host") == 0
    in_flight, dropped = (
        scraped["metaserve_batcher_in_flight_calls"],
        scraped["metaserve_batcher_dropped_calls"],
    )
    for batcher in ("adapt", "predict"):
        assert value(in_flight, "metaserve_batcher_in_flight_calls", batcher=batcher) == 0
        assert (
            value(dropped, "metaserve_batcher_dropped_calls_total", batcher=batcher, reason="overloaded") == 0
        )


async def test_jobs_are_counted_per_state_with_their_iterations(scraped: dict[str, list[Sample]]) -> None:
    states = {s.labels["state"]: s.value for s in scraped["metaserve_jobs"]}
    assert states == {"queued": 0, "running": 0, "succeeded": 1, "failed": 0, "cancelled": 0}
    assert value(scraped["metaserve_job_iterations"], "metaserve_job_iterations") == ITERATIONS


async def test_each_process_labels_its_series_with_its_pid_and_no_label_holds_tenant_data(
    scraped: dict[str, list[Sample]],
) -> None:
    assert value(scraped["process_resident_memory_bytes"], "process_resident_memory_bytes") > 0
    for name, samples in scraped.items():
        expected = set() if name.startswith("metaserve_job") else {str(os.getpid())}
        assert {s.labels.get("pid") for s in samples} - {None} == expected, name
    allowed = {"pid", "method", "route", "status", "le", "batcher", "reason", "tier", "state", "device"}
    labels = {label for samples in scraped.values() for s in samples for label in s.labels}
    assert labels - {"generation", "implementation", "major", "minor", "patchlevel", "version"} <= allowed


async def test_metrics_are_open_and_outside_the_api_schema(service: FastAPI) -> None:
    transport = httpx.ASGITransport(app=service)
    async with httpx.AsyncClient(transport=transport, base_url="http://metaserve") as anonymous:
        answer = await anonymous.get("/metrics")
        schema = (await anonymous.get("/openapi.json")).json()
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain")
    assert "/metrics" not in schema["paths"]
