"""Dependencies of the routes as ``Annotated`` aliases: the settings, the loaded models, the sessions, the
batchers of /adapt and /predict, the datasets and the jobs."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request, status
from starlette.datastructures import State

from app.config import Settings
from app.datasets import DatasetStore
from app.jobs.store import JobStore
from app.serving import Registry, SessionRecord, SessionStore
from app.serving.batcher import Batcher
from app.serving.predict import Answer, Query
from app.serving.sessions import SupportSet

__all__ = [
    "AdaptingDep",
    "DatasetStoreDep",
    "JobStoreDep",
    "PredictingDep",
    "RegistryDep",
    "SettingsDep",
    "StoreDep",
    "caller_gone",
    "ready",
]


def ready(request: Request) -> bool:
    """Whether the lifespan has migrated the database and loaded and warmed up the models (and not yet
    begun to stop)."""
    return bool(getattr(request.app.state, "ready", False))


async def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def _serving(request: Request) -> State:
    if not ready(request):
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "metaserve is starting or stopping")
    return request.app.state


def _served(name: str) -> Callable[[Request], Awaitable[Any]]:
    """A dependency that gives ``app.state.<name>`` once the service is ready, and a 503 before."""

    async def dependency(request: Request) -> Any:
        return getattr(_serving(request), name)

    return dependency


SettingsDep = Annotated[Settings, Depends(_settings)]
RegistryDep = Annotated[Registry, Depends(_served("registry"))]
StoreDep = Annotated[SessionStore, Depends(_served("store"))]
DatasetStoreDep = Annotated[DatasetStore, Depends(_served("datasets"))]
JobStoreDep = Annotated[JobStore, Depends(_served("jobs"))]
AdaptingDep = Annotated[Batcher[SupportSet, SessionRecord], Depends(_served("adapting"))]
PredictingDep = Annotated[Batcher[Query, Answer], Depends(_served("predicting"))]


def caller_gone(request: Request) -> Callable[[], Awaitable[None]]:
    """What completes when the client of ``request`` disconnects (its body already read), so that a call
    waiting for a batch can be dropped."""

    async def gone() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    return gone
