"""POST /adapt: adapt an initialization to a support set, which opens a session."""

from __future__ import annotations

from fastapi import APIRouter, Request

from app.api.deps import AdaptingDep, RegistryDep, caller_gone
from app.api.errors import invalid_fields
from app.api.routes.sessions import session_view
from app.api.schemas import AdaptRequest, Session
from app.serving.sessions import SupportSet

__all__ = ["router"]

router = APIRouter(tags=["sessions"])


@router.post("/adapt")
async def adapt(
    body: AdaptRequest, request: Request, registry: RegistryDep, adapting: AdaptingDep
) -> Session:
    """Adapt `model` (the default model when omitted) to the support set with `steps` inner steps of `lr`
    (the model card's when omitted); the session keeps the adapted parameters for POST /predict."""
    support = SupportSet(registry.get(body.model), body.support.x, body.support.y, body.steps, body.lr)
    # Concurrent calls on one model adapt as one batch, in a thread: the event loop is never blocked.
    with invalid_fields("body", parents={"x": ("support",), "y": ("support",)}):
        record = await adapting.submit(support, caller_gone(request))
    return session_view(record)
