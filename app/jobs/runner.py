"""The service's side of jobs: start a worker process per claimed job (at most ``max_jobs`` at once),
stop the workers of cancelled jobs, requeue jobs whose worker died so that they resume, and load what the
workers publish. ``tick`` does one round; every service process calls it every ``POLL_SECONDS``, and of the
processes sharing a data directory only the one holding its ``RUNNER_LOCK`` runs jobs."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from app.config import Settings
from app.jobs.spec import JobSpec
from app.jobs.store import JobStore, log_state
from app.jobs.worker import JOBS
from app.locks import FileLock
from app.serving import Registry

__all__ = ["POLL_SECONDS", "RUNNER_LOCK", "STOP_SECONDS", "JobRunner", "worker_command"]

POLL_SECONDS = 0.5
STOP_SECONDS = 5.0
"""How long a worker gets to stop after SIGTERM before SIGKILL."""
RUNNER_LOCK = "job-runner.lock"
"""The lock file in the data directory that the process running its jobs holds."""
LOG_TAIL = 2000

logger = logging.getLogger(__name__)


@dataclass
class _Worker:
    process: subprocess.Popen[bytes]
    log: Path
    stopping_since: float | None = None


def worker_command(job_id: str, world_size: int) -> list[str]:
    """The worker's command line: itself, or torchrun starting ``world_size`` of it on this node."""
    worker = ["-m", "app.jobs.worker", job_id]
    if world_size == 1:
        return [sys.executable, *worker]
    torchrun = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={world_size}"]
    return [sys.executable, *torchrun, *worker]


def settings_environment(settings: Settings) -> dict[str, str]:
    """``settings`` as METASERVE_* variables, so that a worker reads exactly the service's settings."""
    values = settings.model_dump(exclude_none=True)
    return {f"METASERVE_{name.upper()}": str(value) for name, value in values.items()}


@dataclass
class JobRunner:
    """The workers this service process started, by job id. Of the processes sharing a data directory (the
    workers of ``metaserve serve --workers N``, replicas), one runs jobs: the first to take ``RUNNER_LOCK``,
    until it ends; the others try again every round, so one of them takes over when it dies."""

    settings: Settings
    store: JobStore
    registry: Registry
    workers: dict[str, _Worker] = field(default_factory=dict)
    lock: FileLock = field(init=False)

    def __post_init__(self) -> None:
        self.lock = FileLock(Path(self.settings.data_dir) / RUNNER_LOCK)

    def tick(self) -> None:
        """One round: if this process runs the jobs, reap, stop the cancelled, requeue the orphaned and
        start what fits; in every process, load what was published."""
        if self._leads():
            self._reap()
            self._stop_cancelled()
            stale = timedelta(seconds=self.settings.job_stale_seconds)
            self.store.requeue(stale=stale, besides=list(self.workers))
            while len(self.workers) < self.settings.max_jobs and (job_id := self.store.claim()) is not None:
                self._start(job_id)
        for model in self.registry.sync():
            logger.info("loaded the published %s", model.ref)

    def stop(self) -> None:
        """Stop every worker (SIGTERM, then SIGKILL), requeue their jobs to resume at the next start, and
        leave the jobs to another process."""
        for worker in self.workers.values():
            _signal(worker.process, signal.SIGTERM)
        deadline = time.monotonic() + STOP_SECONDS
        for worker in self.workers.values():
            try:
                worker.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal(worker.process, signal.SIGKILL)
                worker.process.wait()
        self.store.requeue(list(self.workers))
        self.workers.clear()
        self.lock.release()

    def _leads(self) -> bool:
        """Whether this process runs the jobs, taking ``RUNNER_LOCK`` if no other process holds it."""
        if not self.lock.held and self.lock.acquire():
            logger.info("process %d runs the jobs of %s", os.getpid(), self.settings.data_dir)
        return self.lock.held

    def _start(self, job_id: str) -> None:
        job, _ = self.store.get(job_id)
        spec = JobSpec.model_validate(job.spec)
        log = Path(self.settings.data_dir) / JOBS / job_id / "worker.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        environment = {**os.environ, **settings_environment(self.settings)}
        with log.open("ab") as sink:
            # A session of its own, so that stopping it reaches every process torchrun started.
            process = subprocess.Popen(
                worker_command(job_id, spec.world_size), stdout=sink, stderr=subprocess.STDOUT,
                env=environment, start_new_session=True,
            )  # fmt: skip
        self.workers[job_id] = _Worker(process, log)
        logger.info("job %s started in process %d (log %s)", job_id, process.pid, log)

    def _reap(self) -> None:
        for job_id, worker in list(self.workers.items()):
            status = worker.process.poll()
            if status is None:
                continue
            del self.workers[job_id]
            if status != 0 and worker.stopping_since is None:
                tail = worker.log.read_bytes()[-LOG_TAIL:].decode(errors="replace")
                self.store.finish(job_id, "failed", error=f"the worker exited with status {status}:\n{tail}")
            # The worker logs its own end in its log file; the service's log says it here, once.
            state = self.store.state(job_id)
            if state in ("succeeded", "failed"):
                log_state(job_id, state, exit_status=status)

    def _stop_cancelled(self) -> None:
        now = time.monotonic()
        for job_id, worker in self.workers.items():
            if worker.stopping_since is None and self.store.state(job_id) == "cancelled":
                worker.stopping_since = now
                _signal(worker.process, signal.SIGTERM)
            elif worker.stopping_since is not None and now - worker.stopping_since > STOP_SECONDS:
                _signal(worker.process, signal.SIGKILL)


def _signal(process: subprocess.Popen[bytes], number: int) -> None:
    """Send ``number`` to the worker's whole process group (it may have exited meanwhile)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, number)
