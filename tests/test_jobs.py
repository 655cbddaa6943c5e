"""Meta-training jobs against a real ``metaserve serve`` and real worker processes: a job streams its events,
publishes a version that is promoted and serves sessions; a cancelled job stops within seconds and keeps its
checkpoint; a job whose server and worker are killed resumes after a restart and ends with the very weights of
an uninterrupted run. Around them, the spec's and the queue's rules on a real SQLite file."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.client import Client, MetaserveError
from app.db.engine import make_engine, make_session_factory
from app.db.tables import Initialization, Job
from app.jobs.spec import Algorithm, JobSpec
from app.jobs.store import JobStore
from app.meta import ALGORITHMS
from app.serving import Conflict
from tests.conftest import migrated_engine
from tests.test_serve_e2e import free_port, server_process, serving
from tests.test_serving import sinusoid

WAIT_SECONDS = 120
LOG_LINES = 40
"""How much of a server's log a timed-out wait shows."""
SHORT = {"family": "sinusoid", "meta_batch": 4, "val_tasks": 20, "val_every": 20, "checkpoint_every": 20}
QUICK = {"METASERVE_JOB_STALE_SECONDS": "2"}


@pytest.fixture
def jobs(tmp_path: Path) -> Iterator[JobStore]:
    with migrated_engine(f"sqlite:///{tmp_path / 'metaserve.db'}") as engine:
        yield JobStore(make_session_factory(engine))


def until(check: Callable[[], Any], what: str, seconds: float = WAIT_SECONDS, log: Path | None = None) -> Any:
    """Poll ``check`` until it returns something truthy, and return that. A timeout's failure shows the
    lines of ``log`` (a server's) that say why: its errors first, however early, then its last lines."""
    deadline = time.monotonic() + seconds
    while not (found := check()):
        if time.monotonic() >= deadline:
            excerpt = ""
            if log is not None:
                lines = log.read_text().splitlines()
                errors = [line for line in lines if "ERROR" in line]
                excerpt = "\n".join(["", "errors logged:", *errors, "the log's end:", *lines[-LOG_LINES:]])
            raise AssertionError(f"timed out waiting for {what}{excerpt}")
        time.sleep(0.2)
    return found


def only(models_dir: Path) -> dict[str, str]:
    return {"METASERVE_MODELS_DIR": str(models_dir)}


def finished(client: Client, job_id: str) -> Any:
    """The job once it has succeeded or failed, else None."""
    job = client.job(job_id)
    return job if job.state in ("succeeded", "failed") else None


def loaded(client: Client, ref: str) -> Any:
    """The model summary of ``ref`` once the service has loaded it, else None."""
    return next((m for m in client.models() if m.ref == ref), None)


def database(data_dir: Path) -> sessionmaker[Session]:
    return make_session_factory(make_engine(f"sqlite:///{data_dir / 'metaserve.db'}"))


def test_the_spec_algorithms_are_the_engines() -> None:
    assert set(Algorithm.__args__) == set(ALGORITHMS)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"name": "a"}, "exactly one of family"),
        ({"name": "a", "family": "sinusoid", "dataset_id": "x"}, "exactly one of family"),
        ({"name": "a", "family": "sinusoid", "meta_batch": 2, "world_size": 4}, "exceeds meta_batch"),
        ({"name": "../a", "family": "sinusoid"}, "name"),
        ({"name": "a", "family": "sinusoid", "algorithm": "sgd"}, "algorithm"),
        ({"name": "a", "family": "sinusoid", "inner_lr": float("nan")}, "inner_lr"),
    ],
)
def test_a_bad_spec_is_refused_naming_the_field(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        JobSpec.model_validate(fields)


def test_the_queue_hands_each_job_out_once_oldest_first(jobs: JobStore) -> None:
    first, second = (jobs.submit(JobSpec(name=f"j{i}", family="sinusoid")) for i in range(2))
    assert [jobs.claim(), jobs.claim(), jobs.claim()] == [first.id, second.id, None]
    assert jobs.state(first.id) == "running" and jobs.report(first.id, 5, 10)
    assert jobs.requeue(stale=timedelta(hours=1)) == 0, "fresh heartbeats stay"
    assert jobs.requeue([first.id]) == 1 and jobs.claim() == first.id


def test_a_cancelled_job_refuses_the_workers_writes_and_a_second_cancel(jobs: JobStore) -> None:
    job = jobs.submit(JobSpec(name="j", family="sinusoid"))
    jobs.claim()
    jobs.cancel(job.id)
    assert not jobs.report(job.id, 1, 10) and not jobs.beat(job.id, os.getpid())
    assert not jobs.finish(job.id, "succeeded", result=None)
    with pytest.raises(Conflict, match="already cancelled"):
        jobs.cancel(job.id)
    with pytest.raises(ValueError, match="dataset_id: no dataset 'nope'"):
        jobs.submit(JobSpec(name="j", dataset_id="nope"))


def test_a_job_streams_its_events_publishes_a_version_that_is_promoted_and_serves(
    tmp_path: Path, models_dir: Path
) -> None:
    x, y, query_x, _ = sinusoid(seed=41)
    with serving(tmp_path / "data", free_port(), tmp_path / "serve.log", only(models_dir)) as client:
        before = client.adapt(x, y)
        job = client.submit_job(JobSpec(name="sinusoid", iterations=60, seed=1, **SHORT))
        assert job.state == "queued" and job.model is None
        events = list(client.job_events(job.job_id))
        kinds = [e.kind for e in events]
        assert kinds[-1] == "end" and kinds.count("metric") == 3 and "job" in kinds
        assert [e.data["iteration"] for e in events if e.kind == "metric"] == [20, 40, 60]
        done = client.job(job.job_id)
        assert (done.state, done.model, done.iteration, done.progress) == ("succeeded", "sinusoid@2", 60, 1.0)
        assert events[-1].data["model"] == "sinusoid@2"
        assert [m.iteration for m in client.job_metrics(job.job_id)] == [20, 40, 60]

        until(lambda: loaded(client, "sinusoid@2"), "the published version to load")
        versions = client.model("sinusoid").versions
        published = versions[1]
        assert not published.default and versions[0].default, "a published version waits to be promoted"
        assert published.card["lineage"]["job"] == job.job_id
        assert published.metrics["test/10-shot/1-step"]["metaserve"]["loss"]["tasks"] == 200
        assert client.adapt(x, y).model == "sinusoid@1"

        promoted = client.promote("sinusoid", 2)
        assert promoted.default and promoted.ref == "sinusoid@2"
        after = client.adapt(x, y)
        assert after.model == "sinusoid@2" and client.session(before.session_id).model == "sinusoid@1"
        assert client.predict(query_x.tolist(), session_id=before.session_id).model == "sinusoid@1"
        with pytest.raises(MetaserveError) as missing:
            client.promote("sinusoid", 3)
        assert missing.value.status == 404


def test_a_cancelled_job_stops_within_seconds_and_keeps_its_checkpoint(
    tmp_path: Path, models_dir: Path
) -> None:
    data = tmp_path / "data"
    with serving(data, free_port(), tmp_path / "serve.log", only(models_dir)) as client:
        job = client.submit_job(JobSpec(name="long", iterations=1_000_000, **SHORT))
        until(lambda: client.job(job.job_id).iteration >= 40, "the job to pass a checkpoint")
        with database(data).begin() as db:
            pid = db.scalar(select(Job.worker_pid).where(Job.id == job.job_id))
        assert pid is not None
        cancelled_at = time.monotonic()
        assert client.cancel_job(job.job_id).state == "cancelled"
        until(lambda: not _alive(pid), "the worker to exit", seconds=10)
        assert time.monotonic() - cancelled_at < 10
        assert (data / "jobs" / job.job_id / "checkpoint" / "weights.safetensors").is_file()
        with pytest.raises(MetaserveError) as again:
            client.cancel_job(job.job_id)
        assert again.value.status == 409
        assert client.job(job.job_id).state == "cancelled"


def test_a_job_killed_with_its_server_resumes_after_a_restart_and_ends_as_if_never_stopped(
    tmp_path: Path, models_dir: Path
) -> None:
    data, log, port = tmp_path / "data", tmp_path / "serve.log", free_port()
    environment = {**only(models_dir), **QUICK}
    spec = {**SHORT, "iterations": 400, "checkpoint_every": 50, "seed": 7}
    with server_process(data, port, log, environment) as (server, client):
        straight = client.submit_job(JobSpec(name="straight", **spec))
        until(lambda: client.job(straight.job_id).state == "succeeded", "the uninterrupted job")
        killed = client.submit_job(JobSpec(name="killed", **spec))
        until(lambda: client.job(killed.job_id).iteration >= 120, "the job to pass two checkpoints")
        with database(data).begin() as db:
            worker = db.scalar(select(Job.worker_pid).where(Job.id == killed.job_id))
        assert worker is not None
        os.kill(worker, signal.SIGKILL)
        server.kill()
        server.wait()
    with serving(data, port, log, environment) as client:
        done = until(lambda: finished(client, killed.job_id), "the resumed job")
        assert done.state == "succeeded", done.error
        assert [m.iteration for m in client.job_metrics(killed.job_id)] == [20 * i for i in range(1, 21)]
    with database(data).begin() as db:
        weights = dict(db.execute(select(Initialization.name, Initialization.sha256)).all())
    assert weights["killed"] == weights["straight"]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_two_rank_job_trains_under_torchrun_and_publishes(tmp_path: Path, models_dir: Path) -> None:
    data = tmp_path / "data"
    with serving(data, free_port(), tmp_path / "serve.log", only(models_dir)) as client:
        job = client.submit_job(JobSpec(name="pair", iterations=40, world_size=2, **SHORT))
        done = until(lambda: finished(client, job.job_id), "the two-rank job")
        assert (done.state, done.model) == ("succeeded", "pair@1"), done.error
        until(lambda: loaded(client, "pair@1"), "the published version to load")
        card = client.model("pair").versions[0].card
        assert card["training"]["world_size"] == 2 and card["lineage"]["spec"]["world_size"] == 2


def test_a_job_on_an_uploaded_dataset_publishes_a_classifier_that_adapts_to_new_labels(
    tmp_path: Path, models_dir: Path
) -> None:
    rng = np.random.default_rng(0)
    centres, labels = rng.normal(size=(80, 8)), np.repeat(np.arange(80), 4)
    upload = tmp_path / "clusters.npz"
    np.savez(upload, x=centres[labels] + 0.1 * rng.normal(size=(320, 8)), y=labels)
    data = tmp_path / "data"
    with serving(data, free_port(), tmp_path / "serve.log", only(models_dir)) as client:
        dataset = client.upload_dataset(upload, "clusters", ways=5, shots=1, queries=2)
        spec = {**SHORT, "family": None, "ways": 5, "shots": 1, "queries": 2, "hidden": 32, "val_tasks": 10}
        job = client.submit_job(
            JobSpec(name="clusters", dataset_id=dataset.dataset_id, iterations=40, **spec)
        )
        with pytest.raises(MetaserveError) as in_use:
            client.delete_dataset(dataset.dataset_id)
        assert in_use.value.status == 409
        done = until(lambda: finished(client, job.job_id), "the dataset job")
        assert (done.state, done.model) == ("succeeded", "clusters@1"), done.error
        until(lambda: loaded(client, "clusters@1"), "the published version to load")
        support = [centres[c].tolist() for c in range(5)]
        session = client.adapt(support, ["ant", "bee", "cat", "dog", "eel"], model="clusters")
        answer = client.predict(support, session_id=session.session_id)
        assert {p.label for p in answer.predictions} <= {"ant", "bee", "cat", "dog", "eel"}  # type: ignore[union-attr]
        client.delete_dataset(dataset.dataset_id)
