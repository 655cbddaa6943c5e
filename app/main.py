"""The FastAPI application: ``create_app()`` wires the settings, the routes and a lifespan that migrates the
database, loads and warms up the models, and sweeps expired sessions while the service runs."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from anyio import to_thread
from fastapi import FastAPI

import app as package
from app.api.errors import install_error_handlers
from app.api.routes import api_router
from app.config import Settings, get_settings
from app.db.engine import make_engine, make_session_factory
from app.db.migrate import migrate
from app.serving import Registry, SessionStore
from app.training import resolve_device

__all__ = ["SWEEP_SECONDS", "create_app"]

SWEEP_SECONDS = 60.0
"""How often expired sessions are deleted while the service runs."""

logger = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    """The service for ``settings`` (default: from the METASERVE_* environment)."""
    settings = settings or get_settings()
    app = FastAPI(
        title="metaserve",
        summary=package.__doc__,
        version="0.1.0",
        lifespan=_lifespan,
        max_body_size=settings.max_body_bytes,
    )
    app.state.settings, app.state.ready = settings, False
    install_error_handlers(app)
    app.include_router(api_router)
    return app


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    device = resolve_device(settings.device)
    await to_thread.run_sync(migrate, settings.database_url_resolved)
    engine = make_engine(settings.database_url_resolved, settings.durable_writes)
    factory = make_session_factory(engine)
    try:
        registry = await to_thread.run_sync(Registry.open, settings, factory, device)
        store = SessionStore(settings, factory, registry)
        swept = await to_thread.run_sync(store.sweep_expired), await to_thread.run_sync(store.sweep_orphans)
        logger.info("swept %d expired sessions and %d orphan files", *swept)
        app.state.registry, app.state.store = registry, store
        sweeper = asyncio.create_task(_sweep(store))
        app.state.ready = True
        try:
            yield
        finally:
            app.state.ready = False
            sweeper.cancel()
            await asyncio.gather(sweeper, return_exceptions=True)
    finally:
        engine.dispose()


async def _sweep(store: SessionStore) -> None:
    """Delete expired sessions every ``SWEEP_SECONDS``; a failed sweep is logged and tried again later."""
    while True:
        await asyncio.sleep(SWEEP_SECONDS)
        try:
            swept = await to_thread.run_sync(store.sweep_expired)
        except Exception:
            logger.exception("sweeping expired sessions failed; trying again in %s s", SWEEP_SECONDS)
        else:
            logger.info("swept %d expired sessions", swept)
