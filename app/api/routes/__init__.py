"""The API's routers, one per resource, gathered into ``api_router``."""

from fastapi import APIRouter

from app.api.routes import adapt, health, models, predict, sessions

__all__ = ["api_router"]

api_router = APIRouter()
for module in (adapt, predict, sessions, models, health):
    api_router.include_router(module.router)
