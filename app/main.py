"""The FastAPI application: ``create_app()`` wires the settings, the routes, the metrics with the middleware
that observes and logs each request, and a lifespan that migrates the database, loads and warms up the
models, and sweeps expired sessions while the service runs."""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TypeVar

from anyio import to_thread
from fastapi import FastAPI

import app as package
from app.api.auth import KeyCache, start_auth
from app.api.errors import install_error_handlers, problems
from app.api.limits import RateLimiter
from app.api.metrics import Metrics
from app.api.middleware import Observe
from app.api.routes import KEYED, api_router, datasets
from app.config import Settings, get_settings
from app.dashboard import install_dashboard
from app.datasets import DatasetStore
from app.db.engine import make_engine, make_session_factory
from app.db.migrate import migrate
from app.draining import drain_on_sigterm
from app.jobs.runner import POLL_SECONDS, JobRunner
from app.jobs.store import JobStore
from app.locks import FileLock
from app.meta.host_memory import keep_freed_memory
from app.meta.precision import use_true_float32
from app.serving import Registry, SessionStore
from app.serving.batcher import Batcher
from app.serving.predict import answer_many
from app.serving.sessions import ORPHAN_MIN_AGE_SECONDS
from app.training import resolve_device

__all__ = ["SERVING_LOCK", "SWEEP_SECONDS", "create_app"]

SWEEP_SECONDS = 60.0
"""How often expired sessions are deleted while the service runs."""
SERVING_LOCK = "serving.lock"
"""The lock file in the data directory that every service process shares while it runs."""

logger = logging.getLogger(__name__)
Item = TypeVar("Item")
Result = TypeVar("Result")


def create_app(settings: Settings | None = None) -> FastAPI:
    """The service for ``settings`` (default: from the METASERVE_* environment)."""
    settings = settings or get_settings()
    keep_freed_memory()  # before the batcher's thread and the thread pool start
    app = FastAPI(
        title="metaserve",
        summary=package.__doc__,
        version="0.1.0",
        lifespan=_lifespan,
        max_body_size=settings.max_body_bytes,
    )
    app.state.settings, app.state.ready = settings, False
    app.state.metrics = Metrics(app.state)
    app.add_middleware(Observe, metrics=app.state.metrics)
    install_error_handlers(app)
    app.include_router(api_router)
    # Uploads stream in under a limit of their own; every other route keeps max_body_bytes.
    app.include_router(
        datasets.router,
        max_body_size=datasets.body_limit(settings),
        dependencies=KEYED,
        responses=problems(401, 429),
    )
    install_dashboard(app)
    return app


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    device = resolve_device(settings.device)
    if device.type == "cuda":
        use_true_float32()
    await to_thread.run_sync(migrate, settings.database_url_resolved)
    engine = make_engine(settings.database_url_resolved, settings.durable_writes)
    factory = make_session_factory(engine)
    serving = FileLock(Path(settings.data_dir) / SERVING_LOCK)
    try:
        await to_thread.run_sync(start_auth, settings, factory)
        app.state.keys = KeyCache(factory, settings.key_cache_seconds)
        app.state.limiter = RateLimiter(settings.rate_limit_per_second, settings.rate_limit_burst)
        registry = await to_thread.run_sync(Registry.open, settings, factory, device)
        store = SessionStore(settings, factory, registry)
        expired = await to_thread.run_sync(store.sweep_expired)
        orphans = await to_thread.run_sync(_sweep, store, serving)
        logger.info("swept %d expired sessions and %d orphan files", expired, orphans)
        app.state.registry, app.state.store = registry, store
        metrics: Metrics = app.state.metrics
        app.state.adapting = _batcher(metrics.adaptations(store.create_many), settings)
        app.state.predicting = _batcher(
            metrics.batches("predict", functools.partial(answer_many, registry, store)), settings
        )
        app.state.datasets = DatasetStore(settings, factory)
        app.state.jobs = JobStore(factory)
        runner = JobRunner(settings, app.state.jobs, registry)
        loops = [
            asyncio.create_task(_repeat(SWEEP_SECONDS, store.sweep_expired, "sweeping expired sessions")),
            asyncio.create_task(_repeat(POLL_SECONDS, runner.tick, "running jobs")),
        ]
        # What startup made (torch, the app, the models) lives as long as the process: frozen, it is left
        # out of the collector's full passes, which walked its ~280,000 objects and cost a batched
        # /predict 260 us of its 600 (bench/README.md). Frozen objects still go by reference counting; only
        # a reference cycle among them (none in a replaced model's tensors) would outlive its use.
        gc.freeze()
        app.state.ready = True
        undrain = drain_on_sigterm(app.state, settings.drain_seconds)
        try:
            yield
        finally:
            undrain()
            app.state.ready = False
            for loop in loops:
                loop.cancel()
            await asyncio.gather(*loops, return_exceptions=True)
            await asyncio.gather(app.state.adapting.close(), app.state.predicting.close())
            await to_thread.run_sync(runner.stop)
            gc.unfreeze()  # an app started and stopped in a longer process (tests) can be collected
    finally:
        serving.release()
        engine.dispose()


def _sweep(store: SessionStore, serving: FileLock) -> int:
    """Sweep the orphan session files: every one when no other process serves the data directory (none
    can be in the making, whatever a crash left), else those older than ``ORPHAN_MIN_AGE_SECONDS``; then
    share ``SERVING_LOCK`` with the other processes until this one stops."""
    alone = serving.acquire()
    try:
        return store.sweep_orphans(0.0 if alone else ORPHAN_MIN_AGE_SECONDS)
    finally:
        serving.share()


def _batcher(
    run: Callable[[Sequence[Item]], Sequence[Result | Exception]], settings: Settings
) -> Batcher[Item, Result]:
    """A batcher of ``run`` with the settings' batching, bounds and timeout."""
    return Batcher(
        run,
        batching=settings.batching,
        max_batch=settings.max_batch,
        max_delay=settings.max_batch_delay_ms / 1000,
        max_queue=settings.max_queue,
        timeout=settings.request_timeout_seconds,
    )


async def _repeat(seconds: float, work: Callable[[], object], what: str) -> None:
    """Run ``work`` in a thread every ``seconds``; a failure is logged and the next round tries again."""
    while True:
        await asyncio.sleep(seconds)
        try:
            await to_thread.run_sync(work)
        except Exception:
            logger.exception("%s failed; trying again in %s s", what, seconds)
