"""One job's worker process: ``python -m app.jobs.worker JOB_ID`` (under torchrun for ``world_size > 1``).

It trains with the same ``train`` as ``metaserve train`` into ``<data_dir>/jobs/<id>/checkpoint``,
resuming from the checkpoint there when an earlier worker was stopped, reports progress, a heartbeat and
validation points to the job's row, stops at its next report once the job is cancelled, and publishes
the result. On SIGTERM the worker (every rank of it under torchrun, at the same iteration) checkpoints
after its current iteration and exits, so that the job resumes from there. Settings come from the same
METASERVE_* environment as the service's.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from app.checkpoint import TRAINING_STATE, load_card
from app.config import Settings, get_settings
from app.db.engine import make_engine, make_session_factory
from app.db.tables import Dataset
from app.jobs.publish import publish
from app.jobs.spec import JobSpec
from app.jobs.store import JobStore
from app.logs import configure as configure_logging
from app.meta.distributed import init_from_env
from app.meta.host_memory import keep_freed_memory
from app.meta.train import Progress, Stopped
from app.training import TrainSpec, Validation, train

__all__ = ["BEAT_SECONDS", "JOBS", "CancelledError", "checkpoint_dir", "main", "run"]

JOBS = "jobs"
"""The jobs' folder in the data directory: ``<id>/checkpoint`` and ``<id>/worker.log``."""
BEAT_SECONDS = 1.0
REPORT_SECONDS = 0.5

logger = logging.getLogger(__name__)


class CancelledError(Exception):
    """The job was cancelled while it trained."""


def checkpoint_dir(settings: Settings, job_id: str) -> Path:
    return Path(settings.data_dir) / JOBS / job_id / "checkpoint"


def run(settings: Settings, job_id: str) -> int:
    """Train, then publish, the running job ``job_id``; returns the exit status (0 also when cancelled)."""
    ranks = init_from_env()
    leader = ranks.rank == 0
    stop = _stop_on_sigterm()
    engine = make_engine(settings.database_url_resolved, settings.durable_writes)
    factory = make_session_factory(engine)
    store = JobStore(factory)
    try:
        job, _ = store.get(job_id)
        spec = JobSpec.model_validate(job.spec)
        recipe = _recipe(spec, settings, factory)
        out = checkpoint_dir(settings, job_id)
        resume = (out / TRAINING_STATE).is_file()
        if leader and resume:
            iteration = load_card(out)["training"]["iteration"]
            logger.info("job %s resumes from iteration %d", job_id, iteration)
            store.forget_metrics_after(job_id, iteration)
        stopped = _heartbeat(store, job_id) if leader else threading.Event()
        report = _reporter(store, job_id, recipe.iterations, stopped)
        card = train(recipe, out, spec.name, resume, settings.device, _cache(settings), report, stop)
        if leader:
            lineage = {"job": job_id, "dataset": spec.dataset_id, "spec": spec.model_dump()}
            result = publish(factory, Path(settings.data_dir), out, lineage, _cache(settings))
            store.finish(job_id, "succeeded", result=result)
            logger.info("job %s published %s from %s", job_id, card["name"], out)
        return 0
    except CancelledError:
        logger.info("job %s was cancelled; its last checkpoint stays", job_id)
        return 0
    except Stopped as stopped:
        logger.info("job %s stopped by SIGTERM, checkpointed at iteration %d", job_id, stopped.iteration)
        return 0
    except Exception as error:
        logger.exception("job %s failed", job_id)
        if leader:
            store.finish(job_id, "failed", error=f"{type(error).__name__}: {error}")
        return 1
    finally:
        engine.dispose()


def _recipe(spec: JobSpec, settings: Settings, factory: sessionmaker[Session]) -> TrainSpec:
    """The training recipe: a generated family, or the uploaded dataset's family reading its files."""
    if spec.family is not None:
        return spec.train_spec(spec.family, None)
    with factory() as db:
        dataset = db.get(Dataset, spec.dataset_id)
    if dataset is None:
        raise ValueError(f"dataset_id: the dataset {spec.dataset_id!r} is gone")
    return spec.train_spec(dataset.details["family"], Path(settings.data_dir) / dataset.path)


def _stop_on_sigterm() -> threading.Event:
    """An event that SIGTERM sets instead of ending the process, so that training checkpoints first."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda _number, _frame: stop.set())
    return stop


def _cache(settings: Settings) -> Path:
    return Path(settings.data_dir) / "cache"


def _heartbeat(store: JobStore, job_id: str) -> threading.Event:
    """Beat every ``BEAT_SECONDS`` from a daemon thread (validation can take longer than that); the
    event is set once the job is no longer running."""
    stopped = threading.Event()

    def beat() -> None:
        while not stopped.is_set():
            if not store.beat(job_id, os.getpid()):
                stopped.set()
            time.sleep(BEAT_SECONDS)

    threading.Thread(target=beat, name=f"heartbeat-{job_id}", daemon=True).start()
    return stopped


def _reporter(
    store: JobStore, job_id: str, iterations: int, stopped: threading.Event
) -> Callable[[Progress, Validation | None], None]:
    """``train``'s progress callback: every validation point becomes a metrics row, progress is written
    every ``REPORT_SECONDS``, and a cancelled job raises ``CancelledError`` to stop training."""
    last = 0.0

    def on_progress(progress: Progress, validation: Validation | None) -> None:
        nonlocal last
        if validation is not None:
            point = {"iteration": validation.iteration, "train_loss": progress.loss,
                     "val_loss": validation.loss, "val_accuracy": validation.accuracy}  # fmt: skip
            store.add_metric(job_id, point)
        if stopped.is_set():
            raise CancelledError(job_id)
        if time.monotonic() - last >= REPORT_SECONDS:
            if not store.report(job_id, progress.iteration, iterations):
                raise CancelledError(job_id)
            last = time.monotonic()

    return on_progress


def main(argv: list[str] | None = None) -> None:
    keep_freed_memory()
    configure_logging(get_settings().log_format)
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        sys.exit("usage: python -m app.jobs.worker JOB_ID")
    sys.exit(run(get_settings(), args[0]))


if __name__ == "__main__":
    main()
