"""POST /adapt: adapt an initialization to a support set, which opens a session."""

from __future__ import annotations

from fastapi import APIRouter, Request

from app.api.deps import CallerDep, caller_gone
from app.api.errors import invalid_fields, problems
from app.api.lean import LeanRoute
from app.api.routes.sessions import session_view
from app.api.schemas import AdaptRequest, Session
from app.serving import Registry, SessionRecord
from app.serving.batcher import Batcher
from app.serving.sessions import SupportSet

__all__ = ["router"]

router = APIRouter(tags=["sessions"], route_class=LeanRoute)


def _session_link(operation: str, **link: object) -> dict[str, object]:
    """An OpenAPI link from the new session to ``operation`` on it (what the stateful fuzzer follows)."""
    return {"operationRef": f"#/paths/{operation}", **link}


SESSION_ID = "$response.body#/session_id"
LINKS = {
    "GetSession": _session_link("~1sessions~1{session_id}/get", parameters={"session_id": SESSION_ID}),
    "Predict": _session_link("~1predict/post", requestBody={"session_id": SESSION_ID}),
    "DeleteSession": _session_link("~1sessions~1{session_id}/delete", parameters={"session_id": SESSION_ID}),
}
"""What a client can do with the session an /adapt answers."""


@router.post("/adapt", responses={200: {"links": LINKS}, **problems(400, 404, 413, 503)})
async def adapt(request: Request, body: AdaptRequest, caller: CallerDep) -> Session:
    """Adapt `model` (the default model when omitted) to the support set with `steps` inner steps of `lr`
    (the model card's when omitted); the session keeps the adapted parameters for POST /predict."""
    registry: Registry = request.app.state.registry
    adapting: Batcher[SupportSet, SessionRecord] = request.app.state.adapting
    model = registry.get(body.model)
    support = SupportSet(model, body.support.x, body.support.y, body.steps, body.lr, caller.id)
    # Concurrent calls on one model adapt as one batch, in a thread: the event loop is never blocked.
    with invalid_fields("body", parents={"x": ("support",), "y": ("support",)}):
        record = await adapting.submit(support, caller_gone(request))
    return session_view(record)
