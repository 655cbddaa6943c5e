"""Dependencies of the routes as ``Annotated`` aliases: the settings, the loaded models and the sessions."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from starlette.datastructures import State

from app.config import Settings
from app.serving import Registry, SessionStore

__all__ = ["RegistryDep", "SettingsDep", "StoreDep", "ready"]


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


async def _registry(request: Request) -> Registry:
    registry: Registry = _serving(request).registry
    return registry


async def _store(request: Request) -> SessionStore:
    store: SessionStore = _serving(request).store
    return store


SettingsDep = Annotated[Settings, Depends(_settings)]
RegistryDep = Annotated[Registry, Depends(_registry)]
StoreDep = Annotated[SessionStore, Depends(_store)]
