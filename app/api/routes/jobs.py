"""Meta-training jobs: POST /jobs, GET /jobs (a page), GET /jobs/{id}, its metrics, its live events (SSE),
and POST /jobs/{id}/cancel."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated

from anyio import to_thread
from fastapi import APIRouter, Query, status
from sse_starlette import EventSourceResponse, ServerSentEvent

from app.api.deps import CallerDep, JobStoreDep
from app.api.errors import invalid_fields, problems
from app.api.schemas import Job, JobMetric, JobPage, JobSpec, PageNumber
from app.db import tables
from app.jobs.store import FINISHED, MAX_PAGE_SIZE, JobStore

__all__ = ["EVENT_POLL_SECONDS", "router"]

router = APIRouter(prefix="/jobs", tags=["jobs"], responses=problems(503))

EVENT_POLL_SECONDS = 0.25
"""How often the event stream looks for news in the database (workers write there, in other processes)."""


def job_view(job: tables.Job, model: str | None) -> Job:
    return Job(
        job_id=job.id, state=job.state, spec=JobSpec.model_validate(job.spec), iteration=job.iteration,  # type: ignore[arg-type]
        progress=job.progress, error=job.error, model=model, created=job.created, started=job.started,
        finished=job.finished, heartbeat=job.heartbeat,
    )  # fmt: skip


def metric_view(point: tables.JobMetric) -> JobMetric:
    return JobMetric.model_validate(point, from_attributes=True)


@router.post("", status_code=status.HTTP_201_CREATED, responses=problems(400, 413))
def submit_job(spec: JobSpec, jobs: JobStoreDep, caller: CallerDep) -> Job:
    """Queue a meta-training job; it starts when a worker slot is free (see `METASERVE_MAX_JOBS`) and, when
    it succeeds, publishes `name@<next version>` (promote it to serve it by bare name)."""
    with invalid_fields("body"):
        job = jobs.submit(spec, caller.id, caller.scope)
    return job_view(job, None)


@router.get("")
def list_jobs(
    jobs: JobStoreDep,
    caller: CallerDep,
    page: PageNumber = 1,
    size: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = 50,
) -> JobPage:
    """Your jobs (every key's for an admin key), newest first, `size` per page from page 1."""
    found = jobs.list(page, size, caller.scope)
    return JobPage(page=page, size=size, jobs=[job_view(*job) for job in found])


@router.get("/{job_id}", responses=problems(404))
def get_job(job_id: str, jobs: JobStoreDep, caller: CallerDep) -> Job:
    """A job: state, progress, error, and the model version it published."""
    return job_view(*jobs.get(job_id, caller.scope))


@router.get("/{job_id}/metrics", responses=problems(404))
def get_metrics(
    job_id: str, jobs: JobStoreDep, caller: CallerDep, after: Annotated[int, Query(ge=0)] = 0
) -> list[JobMetric]:
    """The job's validation curve, point by point (those with ids above `after`)."""
    return [metric_view(point) for point in jobs.metrics(job_id, after, caller.scope)]


@router.post("/{job_id}/cancel", responses=problems(404, 409))
def cancel_job(job_id: str, jobs: JobStoreDep, caller: CallerDep) -> Job:
    """Cancel a queued or running job; a running one stops within seconds and keeps its last checkpoint.
    A finished job cannot be cancelled (409)."""
    jobs.cancel(job_id, caller.scope)
    return job_view(*jobs.get(job_id, caller.scope))


@router.get("/{job_id}/events", response_class=EventSourceResponse, responses=problems(404))
async def job_events(job_id: str, jobs: JobStoreDep, caller: CallerDep) -> EventSourceResponse:
    """Server-Sent Events as the job goes: `job` (state and progress, whenever they change), `metric` (each
    validation point) and a last `end` event with the final state, after which the stream closes."""
    await to_thread.run_sync(jobs.get, job_id, caller.scope)  # a 404 before the stream starts
    return EventSourceResponse(_events(jobs, job_id))


async def _events(jobs: JobStore, job_id: str) -> AsyncIterator[ServerSentEvent]:
    """Poll the job and its metrics; sse-starlette stops this generator when the client goes away."""
    last_seen, after = None, 0
    while True:
        job = job_view(*await to_thread.run_sync(jobs.get, job_id))
        for point in await to_thread.run_sync(jobs.metrics, job_id, after):
            after = point.id
            yield ServerSentEvent(metric_view(point).model_dump_json(), event="metric", id=str(point.id))
        seen = (job.state, job.iteration)
        if seen != last_seen:
            last_seen = seen
            yield ServerSentEvent(job.model_dump_json(), event="job")
        if job.state in FINISHED:
            yield ServerSentEvent(job.model_dump_json(), event="end")
            return
        await asyncio.sleep(EVENT_POLL_SECONDS)
