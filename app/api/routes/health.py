"""GET /health/live and GET /health/ready, for a supervisor or a load balancer."""

from __future__ import annotations

from fastapi import APIRouter, Request, status

from app.api.deps import not_ready, ready
from app.api.schemas import Health

__all__ = ["router"]

router = APIRouter(prefix="/health", tags=["health"])


@router.get("/live")
async def live() -> Health:
    """200 while the process serves HTTP at all."""
    return Health(status="live")


@router.get("/ready", responses={status.HTTP_503_SERVICE_UNAVAILABLE: {"description": "Not ready yet."}})
async def ready_for_requests(request: Request) -> Health:
    """200 once the database is migrated and every model is loaded and warmed up; 503 before and while
    stopping."""
    if not ready(request):
        raise not_ready()
    return Health(status="ready")
