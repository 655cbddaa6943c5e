"""POST /adapt: adapt an initialization to a support set, which opens a session."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import RegistryDep, StoreDep
from app.api.errors import invalid_fields
from app.api.routes.sessions import session_view
from app.api.schemas import AdaptRequest, Session

__all__ = ["router"]

router = APIRouter(tags=["sessions"])


@router.post("/adapt")
def adapt(body: AdaptRequest, registry: RegistryDep, store: StoreDep) -> Session:
    """Adapt `model` (the default model when omitted) to the support set with `steps` inner steps of `lr`
    (the model card's when omitted); the session keeps the adapted parameters for POST /predict."""
    # A plain function: FastAPI runs it in its threadpool, so the inner loop never blocks the event loop.
    model = registry.get(body.model)
    with invalid_fields("body", parents={"x": ("support",), "y": ("support",)}):
        record = store.create(model, body.support.x, body.support.y, body.steps, body.lr)
    return session_view(record)
