"""metaserve on a real PostgreSQL server (a throwaway one, tests/postgres.py; the tests skip, saying how to
install it, where there is none): the same migrations, the stores, and two ``metaserve serve`` processes
sharing one database and one data directory."""

from __future__ import annotations

import io
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, func, inspect, select
from sqlalchemy.orm import Session, sessionmaker

from app.client import MetaserveError
from app.config import Settings
from app.datasets import DatasetStore
from app.db.engine import make_engine, make_session_factory
from app.db.migrate import migrate
from app.db.tables import Base, Initialization, Job
from app.jobs.spec import JobSpec
from app.jobs.store import JobStore
from app.serving import Conflict, NotFound, Registry, SessionStore
from tests.conftest import migrated_engine
from tests.test_database import TABLES, current_revision, initialization
from tests.test_datasets import labelled, npz
from tests.test_jobs import SHORT, only, until
from tests.test_serve_e2e import free_port, serving
from tests.test_serving import sinusoid

CPU = torch.device("cpu")


@pytest.fixture
def engine(postgres_url: str) -> Iterator[Engine]:
    with migrated_engine(postgres_url) as engine:
        yield engine


@pytest.fixture
def db(engine: Engine) -> sessionmaker[Session]:
    return make_session_factory(engine)


@pytest.fixture
def settings(tmp_path: Path, models_dir: Path, postgres_url: str) -> Settings:
    return Settings(data_dir=tmp_path / "data", models_dir=models_dir, database_url=postgres_url)


def test_the_migrations_build_the_orms_schema_on_postgres_and_a_second_run_changes_nothing(
    engine: Engine, db: sessionmaker[Session], postgres_url: str
) -> None:
    assert current_revision(engine) == "0002"
    assert set(inspect(engine).get_table_names()) == TABLES | {"alembic_version"}
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []
    with db.begin() as session:
        session.add(initialization())
    migrate(postgres_url)
    assert current_revision(engine) == "0002"
    with db() as session:
        assert session.scalar(select(func.count()).select_from(Initialization)) == 1


def test_processes_migrating_one_postgres_database_at_once_take_turns(postgres_url: str) -> None:
    script = f"from app.db.migrate import migrate; migrate({postgres_url!r})"
    starts = [subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE) for _ in range(4)]
    errors = [start.communicate(timeout=120)[1].decode() for start in starts]
    assert [start.returncode for start in starts] == [0] * 4, errors
    engine = make_engine(postgres_url)
    assert current_revision(engine) == "0002"
    engine.dispose()


def test_a_registry_recording_a_model_that_another_process_is_recording_takes_its_row(
    settings: Settings, db: sessionmaker[Session], engine: Engine
) -> None:
    other = db()
    other.add(initialization())  # sinusoid@1, inserted and not yet committed
    other.flush()
    opened: list[Registry] = []
    opening = threading.Thread(target=lambda: opened.append(Registry.open(settings, db, CPU)))
    opening.start()
    until(lambda: waiting_for_a_lock(engine), "the registry's insert to wait for the other transaction")
    other.commit()
    other.close()
    opening.join()
    with db() as session:
        (row,) = session.scalars(select(Initialization.id)).all()
    assert opened and opened[0].get("sinusoid").id == row


def waiting_for_a_lock(engine: Engine) -> bool:
    with engine.connect() as connection:
        query = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
        return bool(connection.exec_driver_sql(query).scalar())


def test_sessions_jobs_and_datasets_are_stored_in_postgres(
    settings: Settings, db: sessionmaker[Session]
) -> None:
    registry = Registry.open(settings, db, CPU)
    sessions = SessionStore(settings, db, registry)
    x, y, _, _ = sinusoid(seed=5)
    record = sessions.create(registry.get("sinusoid"), x, y, steps=5)
    found, params = SessionStore(settings, db, registry).get(record.id)  # another process's store
    assert all(torch.equal(params[k], v) for k, v in sessions.get(record.id)[1].items())
    assert found.created == record.created and found.created.tzinfo is not None
    assert (found.model, found.label_map, found.steps) == ("sinusoid@1", None, 5)
    assert [s.id for s in sessions.list()] == [record.id]
    sessions.delete(record.id)
    with pytest.raises(NotFound):
        sessions.get(record.id)

    jobs = JobStore(db)
    job = jobs.submit(JobSpec(name="j", iterations=40, **SHORT))
    assert jobs.claim() == job.id and jobs.claim() is None
    assert jobs.report(job.id, 20, 40) and jobs.beat(job.id, 123)
    jobs.add_metric(job.id, {"iteration": 20, "train_loss": 1.0, "val_loss": 0.5, "val_accuracy": None})
    assert jobs.requeue(besides=[job.id]) == 0 and jobs.requeue([job.id]) == 1 and jobs.claim() == job.id
    assert jobs.finish(job.id, "succeeded", result=registry.get("sinusoid").id)
    done, model = jobs.get(job.id)
    assert (done.state, done.iteration, done.progress, model) == ("succeeded", 40, 1.0, "sinusoid@1")
    assert [point.val_loss for point in jobs.metrics(job.id)] == [0.5]

    datasets = DatasetStore(settings, db)
    stored = datasets.create(
        "digits", "npz", io.BytesIO(npz(**labelled(50))), filename=None, ways=5, shots=1, queries=1
    )
    assert datasets.get(stored.id).details["classes"] == {"train": 35, "val": 5, "test": 10}
    reading = jobs.submit(JobSpec(name="d", dataset_id=stored.id))
    with pytest.raises(Conflict, match="queued or running"):
        datasets.delete(stored.id)
    jobs.cancel(reading.id)
    datasets.delete(stored.id)
    assert datasets.list() == []


def test_claims_from_several_threads_at_once_hand_each_job_out_once(db: sessionmaker[Session]) -> None:
    jobs = JobStore(db)
    queued = {jobs.submit(JobSpec(name=f"j{i}", **SHORT)).id for i in range(6)}
    claimed: list[str | None] = []
    with ThreadPoolExecutor(4) as pool:
        claimed += pool.map(lambda _: jobs.claim(), range(24))
    while (job_id := jobs.claim()) is not None:  # a claim that met another on the same job got nothing
        claimed.append(job_id)
    handed = [job_id for job_id in claimed if job_id is not None]
    assert sorted(handed) == sorted(queued)


def test_a_dataset_is_not_deleted_under_a_job_being_queued_for_it(
    settings: Settings, db: sessionmaker[Session], engine: Engine
) -> None:
    datasets = DatasetStore(settings, db)
    stored = datasets.create(
        "digits", "npz", io.BytesIO(npz(**labelled(50))), filename=None, ways=5, shots=1, queries=1
    )
    other = db()
    other.add(Job(id="queuing", spec={}, dataset_id=stored.id))  # inserted and not yet committed
    other.flush()
    outcome: list[Exception | None] = []

    def delete() -> None:
        try:
            datasets.delete(stored.id)
            outcome.append(None)
        except Exception as error:
            outcome.append(error)

    deleting = threading.Thread(target=delete)
    deleting.start()
    until(lambda: waiting_for_a_lock(engine), "the delete to wait for the other transaction")
    other.commit()
    other.close()
    deleting.join()
    assert isinstance(outcome[0], Conflict), outcome
    assert datasets.get(stored.id).id == stored.id and (settings.data_dir / stored.path).exists()


def test_two_servers_on_one_postgres_database_serve_and_delete_each_others_sessions(
    tmp_path: Path, models_dir: Path, postgres_url: str
) -> None:
    data, environment = tmp_path / "data", {**only(models_dir), "METASERVE_DATABASE_URL": postgres_url}
    x, y, query_x, _ = sinusoid(seed=11)
    queries = query_x.tolist()
    with (
        serving(data, free_port(), tmp_path / "first.log", environment) as first,
        serving(data, free_port(), tmp_path / "second.log", environment) as second,
    ):
        session = first.adapt(x, y, steps=10)
        predicted = first.predict(queries, session_id=session.session_id).predictions
        assert second.predict(queries, session_id=session.session_id).predictions == predicted
        assert second.session(session.session_id).created == session.created
        second.delete_session(session.session_id)
        for call in (first.session, lambda s: first.predict(queries, session_id=s)):
            with pytest.raises(MetaserveError) as gone:
                call(session.session_id)
            assert gone.value.status == 404
    assert not (data / "metaserve.db").exists(), "no SQLite file beside PostgreSQL"
