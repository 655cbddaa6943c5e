"""The logs of a real ``metaserve serve``: JSON lines when stderr is no terminal, one per request with the id
that its ``X-Request-ID`` header returned (a sane incoming one echoed), the API key's id but never the key,
no line of uvicorn's access log beside it, and one per change of a job's state; text lines when asked. An
unhandled error's 500 names the request id too."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from app.config import Settings
from app.jobs.spec import JobSpec
from app.main import create_app
from tests.conftest import sinusoid_only
from tests.test_jobs import SHORT, finished, until
from tests.test_serve_e2e import free_port, server_process, serving
from tests.test_serving import sinusoid

INCOMING = "trace-1234.abc:9"
REQUEST_FIELDS = {"request_id", "method", "path", "route", "status", "duration_ms", "client", "key_id"}


def lines(log: Path) -> list[dict[str, Any]]:
    """Every line of the log, each of which must be a JSON object."""
    return [json.loads(line) for line in log.read_text().splitlines()]


def test_json_lines_carry_each_requests_id_and_every_state_of_a_job(tmp_path: Path) -> None:
    log, environment = tmp_path / "serve.log", {"METASERVE_MODELS_DIR": str(sinusoid_only(tmp_path))}
    with serving(tmp_path / "data", free_port(), log, environment) as client:
        key = client.http.headers["X-API-Key"]
        echoed = client.http.get("/health/live", headers={"X-Request-ID": INCOMING})
        insane = client.http.get("/health/live", headers={"X-Request-ID": "a b\tc" + "x" * 200})
        missing = client.http.get("/no/such/path")
        x, y, _, _ = sinusoid(seed=3)
        adapted = client.http.post("/adapt", json={"support": {"x": x, "y": y}})
        job = client.submit_job(JobSpec(name="logged", iterations=20, **SHORT))
        until(lambda: finished(client, job.job_id), "the job to finish")
        until(lambda: "succeeded" in log.read_text(), "the job's end to be logged")
    assert echoed.headers["X-Request-ID"] == INCOMING
    ids = [r.headers["X-Request-ID"] for r in (insane, missing, adapted)]
    assert len(set(ids)) == 3 and all(len(i) == 32 and i != INCOMING for i in ids)

    logged = lines(log)
    assert all({"time", "level", "logger", "pid", "message"} <= line.keys() for line in logged)
    assert not [line for line in logged if line["logger"] == "uvicorn.access"]
    assert not [line for line in logged if any("\x1b" in str(v) for v in line.values())], "colour codes"
    requests = {line["request_id"]: line for line in logged if line["logger"] == "app.requests"}
    assert all(line.keys() >= REQUEST_FIELDS for line in requests.values())
    assert requests[INCOMING]["route"] == "/health/live" and requests[INCOMING]["status"] == 200
    assert (requests[ids[1]]["path"], requests[ids[1]]["route"], requests[ids[1]]["status"]) == (
        "/no/such/path", "unmatched", 404,
    )  # fmt: skip
    posted = requests[ids[2]]
    assert (posted["method"], posted["route"], posted["status"]) == ("POST", "/adapt", 200)
    assert posted["key_id"] and posted["key_id"] in key and posted["key_id"] != key
    assert posted["duration_ms"] > 0 and posted["client"].startswith("127.0.0.1:")
    assert not [line for line in requests.values() if key in json.dumps(line)]
    states = [line["state"] for line in logged if line.get("job_id") == job.job_id]
    assert states == ["queued", "running", "succeeded"]


def test_text_lines_when_asked(tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    environment = {"METASERVE_MODELS_DIR": str(sinusoid_only(tmp_path)), "METASERVE_LOG_FORMAT": "text"}
    with server_process(tmp_path / "data", free_port(), log, environment) as (process, client):
        client.http.get("/health/live", headers={"X-Request-ID": INCOMING})
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    text = log.read_text()
    assert not text.lstrip().startswith("{")
    (line,) = [line for line in text.splitlines() if INCOMING in line]
    assert "app.requests:" in line and '"GET /health/live" 200' in line


@pytest.mark.anyio
async def test_an_unhandled_error_answers_500_with_the_request_id(tmp_path: Path) -> None:
    app: FastAPI = create_app(Settings(data_dir=tmp_path / "data", models_dir=sinusoid_only(tmp_path)))

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("boom")

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://metaserve") as http:
        answer = await http.get("/boom", headers={"X-Request-ID": INCOMING})
    assert answer.status_code == 500 and answer.headers["X-Request-ID"] == INCOMING
    assert INCOMING in answer.json()["detail"]
