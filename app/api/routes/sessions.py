"""GET /sessions (a page), GET /sessions/{id} and DELETE /sessions/{id}."""

from __future__ import annotations

from dataclasses import fields
from typing import Annotated

from fastapi import APIRouter, Query, status

from app.api.deps import CallerDep, StoreDep
from app.api.errors import problems
from app.api.schemas import PageNumber, Session, SessionPage
from app.serving import SessionRecord
from app.serving.sessions import MAX_PAGE_SIZE

__all__ = ["router", "session_view"]

router = APIRouter(prefix="/sessions", tags=["sessions"], responses=problems(503))


def session_view(record: SessionRecord) -> Session:
    """The API's view of a session: the record's fields, three of them renamed for clients."""
    values = {f.name: getattr(record, f.name) for f in fields(record)}  # asdict's deep copies cost 40 us
    return Session(
        session_id=values.pop("id"),
        labels=values.pop("label_map"),
        adapt_ms=round(values.pop("adapt_seconds") * 1000, 3),
        **values,
    )


@router.get("")
def list_sessions(
    store: StoreDep,
    caller: CallerDep,
    page: PageNumber = 1,
    size: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = 50,
) -> SessionPage:
    """Your live sessions (every key's for an admin key), newest first, `size` per page from page 1."""
    records = store.list(page, size, caller.scope)
    return SessionPage(page=page, size=size, sessions=[session_view(r) for r in records])


@router.get("/{session_id}", responses=problems(404))
def get_session(session_id: str, store: StoreDep, caller: CallerDep) -> Session:
    """A session; reading it counts as a use, so its life starts over."""
    record, _ = store.get(session_id, caller.scope)
    return session_view(record)


@router.delete("/{session_id}", status_code=status.HTTP_204_NO_CONTENT, responses=problems(404))
def delete_session(session_id: str, store: StoreDep, caller: CallerDep) -> None:
    """Delete a session and its adapted parameters."""
    store.delete(session_id, caller.scope)
