"""The ``jobs`` table as a queue: submitting, claiming atomically, progress and metrics from the worker,
cancelling, and requeueing jobs whose worker died. The service and the workers share this one class.
Each move to queued, running or cancelled is logged here (``log_state``); a job's end, which its worker
writes, is logged by the runner that sees the worker exit, in the service's log."""

from __future__ import annotations

import builtins
import logging
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, exc, func, select, update
from sqlalchemy.orm import Session, sessionmaker

from app.db.tables import Dataset, Initialization, Job, JobMetric, utc_now, visible_to
from app.jobs.spec import JobSpec
from app.serving import Conflict, NotFound

__all__ = ["ACTIVE", "FINISHED", "STATES", "JobStore", "JobTotals", "log_state"]

ACTIVE = ("queued", "running")
FINISHED = ("succeeded", "failed", "cancelled")
STATES = (*ACTIVE, *FINISHED)
MAX_PAGE_SIZE = 1000

logger = logging.getLogger(__name__)


def log_state(job_id: str, state: str, **fields: Any) -> None:
    """Log that the job ``job_id`` is now ``state``: one line per change, ``job_id`` and ``state`` as fields
    (with ``fields``), so that a log search finds a job's whole life."""
    logger.info("job %s %s", job_id, state, extra={"job_id": job_id, "state": state, **fields})


@dataclass(frozen=True)
class JobTotals:
    """What the jobs table holds now: jobs per state (every state present), and the meta-training
    iterations done, summed over every job."""

    states: dict[str, int]
    iterations: int


class JobStore:
    """Jobs in the database behind ``session_factory``."""

    def __init__(self, session_factory: sessionmaker[Session]) -> None:
        self._db = session_factory

    def submit(self, spec: JobSpec, owner: str | None = None, scope: str | None = None) -> Job:
        """Queue a job for ``spec``, owned by ``owner`` (an API key's id); its dataset, if any, must exist
        and belong to ``scope`` (an owner; None: anyone)."""
        job = Job(
            id=secrets.token_urlsafe(16), spec=spec.model_dump(), dataset_id=spec.dataset_id, owner=owner
        )
        missing = f"dataset_id: no dataset {spec.dataset_id!r}; see GET /datasets"
        try:
            with self._db.begin() as db:
                dataset = None if spec.dataset_id is None else db.get(Dataset, spec.dataset_id)
                if spec.dataset_id is not None and (dataset is None or scope not in (None, dataset.owner)):
                    raise ValueError(missing)
                db.add(job)
        except exc.IntegrityError:  # the dataset was deleted between the check and the insert
            raise ValueError(missing) from None
        log_state(job.id, "queued")
        return job

    def get(self, job_id: str, scope: str | None = None) -> tuple[Job, str | None]:
        """The job and the ``name@version`` it published, if it has; ``NotFound`` also when ``scope`` (an
        owner; None: anyone) does not own it."""
        query = _with_model().where(Job.id == job_id, visible_to(Job.owner, scope))
        with self._db() as db:
            found = db.execute(query).one_or_none()
        if found is None:
            raise NotFound(f"no job {job_id!r}")
        return found[0], _ref(found[1], found[2])

    def list(
        self, page: int = 1, size: int = 50, scope: str | None = None
    ) -> builtins.list[tuple[Job, str | None]]:
        """Jobs of ``scope`` (an owner; None: all), newest first, ``size`` per page from page 1."""
        if page < 1 or not 1 <= size <= MAX_PAGE_SIZE:
            raise ValueError(f"size: must be from 1 to {MAX_PAGE_SIZE}, and page >= 1; got {size}, {page}")
        query = (
            _with_model()
            .where(visible_to(Job.owner, scope))
            .order_by(Job.created.desc(), Job.id)
            .offset((page - 1) * size)
            .limit(size)
        )
        with self._db() as db:
            return [(job, _ref(name, version)) for job, name, version in db.execute(query)]

    def metrics(self, job_id: str, after: int = 0, scope: str | None = None) -> builtins.list[JobMetric]:
        """The job's validation points with ids above ``after``, in order; ``NotFound`` also when ``scope``
        (an owner; None: anyone) does not own the job."""
        query = select(JobMetric).where(JobMetric.job_id == job_id, JobMetric.id > after)
        with self._db() as db:
            job = db.get(Job, job_id)
            if job is None or scope not in (None, job.owner):
                raise NotFound(f"no job {job_id!r}")
            return builtins.list(db.scalars(query.order_by(JobMetric.id)))

    def cancel(self, job_id: str, scope: str | None = None) -> Job:
        """Mark a queued or running job cancelled: a queued one never starts, a running one's worker sees
        the state at its next report and stops (the runner stops it if it does not). ``NotFound`` also when
        ``scope`` (an owner; None: anyone) does not own it."""
        with self._db.begin() as db:
            job = db.get(Job, job_id)
            if job is None or scope not in (None, job.owner):
                raise NotFound(f"no job {job_id!r}")
            if job.state in FINISHED:
                raise Conflict(f"job {job_id!r} has already {job.state}; there is nothing to cancel")
            job.state, job.finished = "cancelled", utc_now()
        log_state(job_id, "cancelled")
        return job

    def claim(self) -> str | None:
        """Atomically move the oldest queued job to running and return its id (None when none waits)."""
        now = utc_now()
        oldest = select(Job.id).where(Job.state == "queued").order_by(Job.created, Job.id).limit(1)
        with self._db.begin() as db:
            claimed = db.execute(
                update(Job)
                .where(Job.id == oldest.scalar_subquery(), Job.state == "queued")
                .values(state="running", heartbeat=now, worker_pid=None)
                .returning(Job.id)
            ).scalar()
            if claimed is not None:
                db.execute(update(Job).where(Job.id == claimed, Job.started.is_(None)).values(started=now))
        if claimed is not None:
            log_state(claimed, "running")
        return claimed

    def state(self, job_id: str) -> str:
        with self._db() as db:
            found = db.scalar(select(Job.state).where(Job.id == job_id))
        if found is None:
            raise NotFound(f"no job {job_id!r}")
        return found

    def requeue(
        self,
        job_ids: builtins.list[str] | None = None,
        stale: timedelta | None = None,
        besides: Sequence[str] = (),
    ) -> int:
        """Put running jobs back in the queue, to resume from their last checkpoint: ``job_ids``, or those
        whose heartbeat is older than ``stale`` (their worker died), except ``besides`` (workers this
        process still watches). Returns how many."""
        running = update(Job).where(Job.state == "running", Job.id.not_in(besides))
        if job_ids is not None:
            running = running.where(Job.id.in_(job_ids))
        if stale is not None:
            running = running.where(Job.heartbeat < utc_now() - stale)
        with self._db.begin() as db:
            requeued = db.scalars(running.values(state="queued", worker_pid=None).returning(Job.id)).all()
        for job_id in requeued:
            log_state(job_id, "queued", requeued=True)
        return len(requeued)

    def totals(self) -> JobTotals:
        """Jobs per state and the iterations done, in one query (for the metrics, at each scrape)."""
        query = select(Job.state, func.count(), func.coalesce(func.sum(Job.iteration), 0)).group_by(Job.state)
        with self._db() as db:
            rows = db.execute(query).all()
        states = dict.fromkeys(STATES, 0) | {state: count for state, count, _ in rows}
        return JobTotals(states, sum(int(iterations) for _, _, iterations in rows))

    # The worker's side: each write applies only while the job is still running, so a cancel wins.

    def beat(self, job_id: str, pid: int) -> bool:
        """Record that the worker ``pid`` is alive; False once the job is no longer running."""
        return self._while_running(job_id, heartbeat=utc_now(), worker_pid=pid)

    def report(self, job_id: str, iteration: int, iterations: int) -> bool:
        """Record progress; False once the job is no longer running (cancelled)."""
        return self._while_running(
            job_id, iteration=iteration, progress=iteration / iterations, heartbeat=utc_now()
        )

    def add_metric(self, job_id: str, point: dict[str, Any]) -> None:
        """Record a validation point: ``iteration``, ``train_loss``, ``val_loss`` and ``val_accuracy``."""
        with self._db.begin() as db:
            db.add(JobMetric(job_id=job_id, **point))

    def forget_metrics_after(self, job_id: str, iteration: int) -> None:
        """Drop the points past ``iteration``: a resumed job replays them from its checkpoint."""
        with self._db.begin() as db:
            db.execute(delete(JobMetric).where(JobMetric.job_id == job_id, JobMetric.iteration > iteration))

    def finish(self, job_id: str, state: str, error: str | None = None, result: int | None = None) -> bool:
        """End a running job as ``state`` (succeeded, with the id of the version it published, or failed
        with the error); False if it had ended already."""
        if state not in FINISHED:
            raise ValueError(f"state must be one of {FINISHED}; got {state!r}")
        values: dict[str, Any] = {"state": state, "error": error, "finished": utc_now()}
        if state == "succeeded":
            values.update(
                result_initialization_id=result, progress=1.0, iteration=Job.spec["iterations"].as_integer()
            )
        return self._while_running(job_id, **values)

    def _while_running(self, job_id: str, **values: Any) -> bool:
        with self._db.begin() as db:
            changed = db.execute(
                update(Job).where(Job.id == job_id, Job.state == "running").values(**values).returning(Job.id)
            ).all()
        return bool(changed)


def _with_model() -> Any:
    """Jobs with the name and version of the initialization they published (None until they have)."""
    return select(Job, Initialization.name, Initialization.version).outerjoin(
        Initialization, Job.result_initialization_id == Initialization.id
    )


def _ref(name: str | None, version: int | None) -> str | None:
    return None if name is None else f"{name}@{version}"
