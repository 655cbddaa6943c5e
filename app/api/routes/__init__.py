"""The API's routers, one per resource, gathered into ``api_router``; ``datasets.router`` is included on
its own, under the upload's body limit (see ``create_app``)."""

from fastapi import APIRouter

from app.api.routes import adapt, health, jobs, models, predict, sessions

__all__ = ["api_router"]

api_router = APIRouter()
for module in (adapt, predict, sessions, models, jobs, health):
    api_router.include_router(module.router)
