"""Dependencies of the routes as ``Annotated`` aliases: the caller (its API key checked and rate-limited),
the settings, the loaded models, the sessions, the datasets and the jobs. /adapt and /predict call
``caller`` themselves (``app.api.lean``) and take their batchers from the app's state."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request, Security, status
from fastapi.security import APIKeyHeader
from starlette.datastructures import State

from app.api.auth import ANONYMOUS, KeyCache
from app.api.limits import RateLimiter
from app.config import Settings
from app.datasets import DatasetStore
from app.jobs.store import JobStore
from app.keys import Caller
from app.serving import Registry, SessionStore

__all__ = [
    "API_KEY_HEADER",
    "AdminDep",
    "CallerDep",
    "DatasetStoreDep",
    "JobStoreDep",
    "RegistryDep",
    "SettingsDep",
    "StoreDep",
    "caller",
    "caller_gone",
    "not_ready",
    "ready",
]


def not_ready() -> HTTPException:
    """The answer of every route but /health/live before the service is ready and once it drains."""
    return HTTPException(
        status.HTTP_503_SERVICE_UNAVAILABLE, "metaserve is starting or stopping", {"Retry-After": "1"}
    )


def ready(request: Request) -> bool:
    """Whether the lifespan has migrated the database and loaded and warmed up the models (and not yet
    begun to stop)."""
    return bool(getattr(request.app.state, "ready", False))


async def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def _serving(request: Request) -> State:
    if not ready(request):
        raise not_ready()
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

API_KEY_HEADER = "X-API-Key"
_API_KEY = APIKeyHeader(
    name=API_KEY_HEADER, auto_error=False, description="An API key from `metaserve keys create`."
)
_UNAUTHORIZED = {"WWW-Authenticate": "ApiKey"}


async def caller(request: Request, key: Annotated[str | None, Security(_API_KEY)]) -> Caller:
    """The caller of the request: 401 without a valid key (when auth is on), 429 with Retry-After past its
    rate limit. Keys are checked once per request and trusted from memory for ``key_cache_seconds``."""
    state = _serving(request)
    settings: Settings = state.settings
    found = ANONYMOUS if not settings.auth else await _verified(state.keys, key)
    request.state.key_id = found.id  # for the request's log line: the key's id, never the key
    limiter: RateLimiter = state.limiter
    wait = limiter.wait(found.id)
    if wait:
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            f"over {settings.rate_limit_per_second:g} requests a second; retry after {wait} s",
            {"Retry-After": str(wait)},
        )
    return found


async def _verified(keys: KeyCache, key: str | None) -> Caller:
    if not key:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "send an API key in X-API-Key", _UNAUTHORIZED)
    found = await keys.checked(key)
    if found is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "unknown or revoked API key", _UNAUTHORIZED)
    return found


async def _admin(found: Annotated[Caller, Depends(caller)]) -> Caller:
    if not found.admin:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "only an admin API key may do this")
    return found


CallerDep = Annotated[Caller, Depends(caller)]
AdminDep = Annotated[Caller, Depends(_admin)]


def caller_gone(request: Request) -> Callable[[], Awaitable[None]]:
    """What completes when the client of ``request`` disconnects (its body already read), so that a call
    waiting for a batch can be dropped."""

    async def gone() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    return gone
