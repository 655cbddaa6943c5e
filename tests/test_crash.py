"""Crash safety against a real ``metaserve serve``: SIGKILL in a burst of /adapt calls loses no acknowledged
session and leaves no orphan file nor a damaged database (beside another live server, only orphans too old
to be in the making are swept); SIGTERM lets the request in flight finish, refuses new ones and checkpoints
the running job, which resumes from there; a corrupt session file costs its session only (409), never the
server."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.client import Client, MetaserveError
from app.jobs.spec import JobSpec
from app.locks import FileLock
from app.main import SERVING_LOCK
from app.serving.sessions import ORPHAN_MIN_AGE_SECONDS
from tests.test_jobs import SHORT, until
from tests.test_serve_e2e import free_port, server_process
from tests.test_serving import copy_model, sinusoid

CLIENTS = 32
ACKNOWLEDGED = 150
QUERIES = [-4.0, -1.5, 0.25, 2.0, 4.5]
SLOW_SUPPORT = 100_000
"""Support points of the /adapt in flight at SIGTERM: some seconds of the sinusoid's 100 inner steps."""


@pytest.fixture
def environment(tmp_path: Path) -> dict[str, str]:
    """The shipped sinusoid alone (the service starts in seconds), keys off: these tests are about crashes."""
    copy_model("sinusoid", tmp_path / "models" / "sinusoid")
    return {"METASERVE_MODELS_DIR": str(tmp_path / "models"), "METASERVE_AUTH": "off"}


def burst(url: str, acknowledged: dict[str, list[Any] | None], failures: list[str], seed: int) -> None:
    """Adapt until the server dies, recording every session whose /adapt answered 200; anything but a lost
    connection is a failure."""
    with Client(url, timeout=30) as client:
        for task in range(seed * 10_000, (seed + 1) * 10_000):
            x, y, _, _ = sinusoid(seed=task)
            try:
                acknowledged.setdefault(client.adapt(x, y, steps=5).session_id, None)
            except httpx.TransportError:
                return
            except MetaserveError as error:
                failures.append(f"{error.status}: {error.detail}")
                return


def observe(url: str, acknowledged: dict[str, list[Any] | None], failures: list[str]) -> None:
    """Predict each acknowledged session once, one call at a time, until the server dies: a lone call is
    never batched with others, so after the restart the same call must give the same bits."""
    with Client(url, timeout=30) as client:
        while True:
            for session in [s for s, answer in list(acknowledged.items()) if answer is None]:
                try:
                    acknowledged[session] = client.predict(QUERIES, session_id=session).predictions
                except httpx.TransportError:
                    return
                except MetaserveError as error:
                    failures.append(f"{error.status}: {error.detail}")
                    return
            time.sleep(0.01)


def _refused(client: httpx.Client) -> bool:
    """Whether the server no longer takes connections."""
    try:
        client.get("/health/live")
    except httpx.TransportError:
        return True
    return False


def rows(data: Path) -> set[str]:
    """The files that the database's session rows name, relative to the data directory."""
    with sqlite3.connect(data / "metaserve.db") as db:
        return {path for (path,) in db.execute("SELECT path FROM sessions")}


def test_sigkill_in_a_burst_of_adapts_keeps_every_acknowledged_session_and_leaves_no_orphan(
    tmp_path: Path, environment: dict[str, str]
) -> None:
    data, log, port = tmp_path / "data", tmp_path / "serve.log", free_port()
    acknowledged: dict[str, list[Any] | None] = {}
    failures: list[str] = []
    with server_process(data, port, log, environment) as (server, _):
        url = f"http://127.0.0.1:{port}"
        clients = [
            threading.Thread(target=burst, args=(url, acknowledged, failures, seed))
            for seed in range(CLIENTS)
        ]
        clients.append(threading.Thread(target=observe, args=(url, acknowledged, failures)))
        for thread in clients:
            thread.start()
        predicted = lambda: sum(answer is not None for answer in list(acknowledged.values()))  # noqa: E731
        until(lambda: (len(acknowledged) >= ACKNOWLEDGED and predicted() >= 3) or failures, "the burst")
        server.send_signal(signal.SIGKILL)
        server.wait()
        for thread in clients:
            thread.join()
    assert not failures, failures
    with sqlite3.connect(data / "metaserve.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]

    # What a crash may leave (a temporary file, a file whose row never committed), and two damaged files.
    sessions = data / "sessions"
    (sessions / ".left.safetensors.x1y2.partial").write_bytes(b"half")
    answered = [session for session, answer in acknowledged.items() if answer is not None]
    truncated, garbled = answered[:2]
    (sessions / "left.safetensors").write_bytes((sessions / f"{answered[2]}.safetensors").read_bytes())
    file = sessions / f"{truncated}.safetensors"
    file.write_bytes(file.read_bytes()[:40])
    (sessions / f"{garbled}.safetensors").write_bytes(b"\xff" * 64)

    with server_process(data, port, log, environment) as (_, client):
        for damaged in (truncated, garbled):
            with pytest.raises(MetaserveError) as refused:
                client.predict(QUERIES, session_id=damaged)
            assert refused.value.status == 409 and damaged in str(refused.value.detail)
        for session, answer in acknowledged.items():
            if session not in (truncated, garbled):
                served = client.predict(QUERIES, session_id=session).predictions
                assert answer is None or served == answer, session
        client.delete_session(truncated)
        assert client.ready()
    assert "cannot read sessions/" in log.read_text()
    on_disk = {f"sessions/{path.name}" for path in sessions.iterdir()}
    assert on_disk == rows(data), "every file has its row and every row its file"
    assert {f"sessions/{s}.safetensors" for s in acknowledged if s != truncated} <= on_disk


def test_beside_another_live_server_only_orphans_too_old_to_be_in_the_making_are_swept(
    tmp_path: Path, environment: dict[str, str]
) -> None:
    sessions = tmp_path / "data" / "sessions"
    sessions.mkdir(parents=True)
    young, old = sessions / "young.safetensors", sessions / "old.safetensors"
    young.write_bytes(b"written a moment ago, its row on the way")
    old.write_bytes(b"left by a crash")
    long_ago = time.time() - ORPHAN_MIN_AGE_SECONDS - 1
    os.utime(old, (long_ago, long_ago))
    other = FileLock(tmp_path / "data" / SERVING_LOCK)
    other.share()  # as a live server process does
    try:
        with server_process(tmp_path / "data", free_port(), tmp_path / "serve.log", environment):
            pass
    finally:
        other.release()
    assert young.exists() and not old.exists()


@pytest.mark.parametrize("world_size", [1, 2], ids=["one-process-job", "torchrun-job"])
def test_sigterm_drains_with_503s_while_the_request_in_flight_finishes_and_checkpoints_the_job(
    tmp_path: Path, environment: dict[str, str], world_size: int
) -> None:
    data, log, port = tmp_path / "data", tmp_path / "serve.log", free_port()
    environment = {**environment, "METASERVE_MAX_SUPPORT": str(SLOW_SUPPORT), "METASERVE_DRAIN_SECONDS": "3"}
    spec = {**SHORT, "iterations": 1_000_000, "checkpoint_every": 1_000_000, "world_size": world_size}
    x = [(i / SLOW_SUPPORT - 0.5) * 10 for i in range(SLOW_SUPPORT)]
    slow: dict[str, Any] = {}

    def adapt_slowly(client: Client) -> None:
        try:
            slow["session"] = client.adapt(x, [0.5 * v for v in x], steps=100)
            slow["answered"] = time.monotonic()
        except Exception as error:
            slow["error"] = error

    with server_process(data, port, log, environment) as (server, client):
        job = client.submit_job(JobSpec(name="long", **spec))
        until(lambda: client.job(job.job_id).iteration >= 30, "the job to train")
        thread = threading.Thread(target=adapt_slowly, args=(client,))
        thread.start()
        time.sleep(1.0)  # the adaptation is under way
        server.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        time.sleep(0.5)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as late:
            assert late.get("/health/live").status_code == 200
            assert late.get("/health/ready").status_code == 503
            refused = late.post("/predict", json={"x": QUERIES})
            assert refused.status_code == 503 and refused.headers["Retry-After"], refused.text
            until(lambda: _refused(late), "the port to close after the drain")
        assert time.monotonic() - signalled >= 2.5, "the port closed before the drain's end"
        thread.join()
        assert server.wait(timeout=60) in (0, -signal.SIGTERM), log.read_text()
    assert "session" in slow, slow.get("error")
    assert slow["answered"] > signalled, "the adaptation was still in flight at SIGTERM"
    with sqlite3.connect(data / "metaserve.db") as db:
        assert db.execute("SELECT state FROM jobs WHERE id = ?", (job.job_id,)).fetchall() == [("queued",)]
    checkpoint = data / "jobs" / job.job_id / "checkpoint"
    stopped = json.loads((checkpoint / "card.json").read_text())["training"]["iteration"]
    assert stopped >= 30 and (checkpoint / "training-state.safetensors").is_file()
    worker_log = data / "jobs" / job.job_id / "worker.log"
    # Every rank stops at the iteration the leader checkpointed.
    stops = worker_log.read_text().count(f"stopped by SIGTERM, checkpointed at iteration {stopped}")
    assert stops == world_size, worker_log.read_text()

    with server_process(data, port, log, environment) as (_, client):
        session = slow["session"]
        assert client.session(session.session_id).created == session.created
        assert len(client.predict(QUERIES, session_id=session.session_id).predictions) == len(QUERIES)
        until(
            lambda: f"resumes from iteration {stopped}" in worker_log.read_text(),
            "the job to resume",
            log=worker_log,
        )
        until(lambda: client.job(job.job_id).iteration > stopped, "the resumed job to train")
        client.cancel_job(job.job_id)
