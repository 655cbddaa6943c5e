"""Several service processes on one data directory (SQLite here; test_postgres.py for PostgreSQL): the workers
of ``metaserve serve --workers 2`` migrate the database once, outlive a stall of some seconds, answer alike
for a session whichever of them adapted it, and one process at a time runs the jobs, another taking over
when it dies."""

from __future__ import annotations

import json
import os
import signal
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from app.client import Client
from app.config import Settings
from app.db.engine import make_engine, make_session_factory
from app.db.migrate import migrate
from app.jobs.runner import POLL_SECONDS, RUNNER_LOCK, JobRunner
from app.jobs.spec import JobSpec
from app.jobs.store import JobStore
from app.serving import Registry
from tests.conftest import admin_key
from tests.test_database import current_revision
from tests.test_jobs import SHORT, only, until
from tests.test_serve_e2e import free_port, server_process
from tests.test_serving import sinusoid

WORKERS = 2
ROUNDS = 30
"""Most sessions to adapt until both workers have answered, one for a session the other adapted."""
CALLS = ("/adapt", "/predict")
STARTED, LEADS = "Application startup complete.", "runs the jobs of"
STALL_SECONDS = 8
"""How long a worker is stopped: longer than uvicorn's own 5 s health check, which killed workers still
importing on a loaded machine, shorter than ``METASERVE_WORKER_HEALTHCHECK_SECONDS``."""


def lines(log: Path) -> list[dict[str, Any]]:
    """The log's lines: JSON objects, each naming its process (``pid``)."""
    return [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]


def logged(log: Path, fragment: str) -> list[int]:
    """The processes of the log's lines that contain ``fragment``, in order."""
    return [line["pid"] for line in lines(log) if fragment in line["message"]]


def callers(log: Path) -> list[int]:
    """The process that answered each /adapt and /predict, in order (from the requests' lines)."""
    return [line["pid"] for line in lines(log) if line.get("route") in CALLS]


def test_two_workers_migrate_once_serve_each_others_sessions_and_one_runs_the_jobs_until_it_dies(
    tmp_path: Path, models_dir: Path
) -> None:
    data, log, port = tmp_path / "data", tmp_path / "serve.log", free_port()
    with server_process(data, port, log, only(models_dir), ["--workers", str(WORKERS)]) as (server, _):
        until(lambda: len(logged(log, STARTED)) == WORKERS, "both workers to start", log=log)
        workers = set(logged(log, STARTED))
        stalled = min(workers)
        os.kill(stalled, signal.SIGSTOP)
        time.sleep(STALL_SECONDS)
        os.kill(stalled, signal.SIGCONT)
        assert "died" not in log.read_text(), "a stalled worker was killed as hung"
        # A connection per request, so that the kernel hands each to either worker.
        http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60, headers={"Connection": "close"})
        with Client(http=http, api_key=admin_key(data)) as client:
            calls: list[str] = []
            answers: dict[str, set[tuple[float, ...]]] = defaultdict(set)
            for seed in range(ROUNDS):
                x, y, query_x, _ = sinusoid(seed, queries=10)
                session_id = client.adapt(x, y, steps=5).session_id
                calls.append(session_id)
                for _ in range(3):
                    answer = client.predict(query_x.tolist(), session_id=session_id).predictions
                    answers[session_id].add(tuple(answer))
                    calls.append(session_id)
                # A request's line is logged once its answer has gone out: wait for the last one.
                until(lambda: len(callers(log)) == len(calls), "every call's log line", log=log)
                served = defaultdict(set)
                for session, pid in zip(calls, callers(log), strict=True):
                    served[session].add(pid)
                if any(len(pids) == WORKERS for pids in served.values()):
                    break
            assert set(callers(log)) == workers
            assert any(len(pids) == WORKERS for pids in served.values()), "no session served by both"
            assert all(len(found) == 1 for found in answers.values()), "workers answered a session unlike"

            until(lambda: logged(log, LEADS), "a process to run the jobs", log=log)
            time.sleep(3 * POLL_SECONDS)  # each worker tries to at every tick
            (leader,) = logged(log, LEADS)
            assert leader in workers
            os.kill(leader, signal.SIGKILL)
            until(lambda: len(logged(log, LEADS)) == 2, "another process to run the jobs", log=log)
            assert logged(log, LEADS)[1] != leader
            until(
                lambda: len(logged(log, STARTED)) == WORKERS + 1, "the killed worker's replacement", log=log
            )
            x, y, query_x, _ = sinusoid(seed=99, queries=10)
            assert client.predict(query_x.tolist(), session_id=client.adapt(x, y).session_id).predictions
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=30) == 0, log.read_text()
    text = log.read_text()
    assert text.count("Running upgrade  -> 0001") == text.count("Running upgrade 0001 -> 0002") == 1, text
    assert "Traceback" not in text and "ERROR" not in text, text
    assert f"Stopping parent process [{server.pid}]" in text.splitlines()[-1]
    engine = make_engine(f"sqlite:///{data / 'metaserve.db'}")
    assert current_revision(engine) == "0002"
    engine.dispose()


@pytest.fixture
def runners(tmp_path: Path, models_dir: Path) -> Iterator[tuple[JobRunner, JobRunner]]:
    """Two job runners of one data directory, as two service processes would have."""
    settings = Settings(data_dir=tmp_path / "data", models_dir=models_dir)
    migrate(settings.database_url_resolved)
    engine = make_engine(settings.database_url_resolved)
    factory = make_session_factory(engine)
    registry = Registry.open(settings, factory, torch.device("cpu"))
    store = JobStore(factory)
    pair = (JobRunner(settings, store, registry), JobRunner(settings, store, registry))
    yield pair
    for runner in pair:
        runner.stop()
    engine.dispose()


def test_one_runner_of_a_data_directory_runs_its_jobs_and_another_takes_over_once_it_stops(
    runners: tuple[JobRunner, JobRunner],
) -> None:
    first, second = runners
    first.tick()
    job = first.store.submit(JobSpec(name="once", **SHORT))
    second.tick()
    assert first.store.state(job.id) == "queued" and not second.workers, "only the lock's holder claims"
    assert (first.settings.data_dir / RUNNER_LOCK).is_file()
    first.tick()
    assert first.store.state(job.id) == "running" and set(first.workers) == {job.id}
    first.stop()  # stops the worker, requeues the job, lets go of the lock
    assert first.store.state(job.id) == "queued"
    second.tick()
    assert first.store.state(job.id) == "running" and set(second.workers) == {job.id}
    first.tick()
    assert not first.workers
    assert [found.state for found, _ in first.store.list()] == ["running"], "one job, run once"
