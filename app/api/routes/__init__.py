"""The API's routers, one per resource, gathered into ``api_router``, every one but health and metrics
behind an API key; ``datasets.router`` is included on its own, under the upload's body limit (see
``create_app``)."""

from fastapi import APIRouter, Depends

from app.api.deps import caller
from app.api.errors import problems
from app.api.routes import adapt, health, jobs, metrics, models, predict, sessions

__all__ = ["KEYED", "api_router"]

KEYED = [Depends(caller)]
"""The dependencies of a route that needs an API key."""

api_router = APIRouter()
for module in (adapt, predict, sessions, models, jobs):
    api_router.include_router(module.router, dependencies=KEYED, responses=problems(401, 429))
api_router.include_router(health.router)
api_router.include_router(metrics.router)
