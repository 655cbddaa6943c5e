"""GET /sessions (a page), GET /sessions/{id} and DELETE /sessions/{id}."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated

from fastapi import APIRouter, Query, status

from app.api.deps import StoreDep
from app.api.schemas import Session, SessionPage
from app.serving import SessionRecord
from app.serving.sessions import MAX_PAGE_SIZE

__all__ = ["router", "session_view"]

router = APIRouter(prefix="/sessions", tags=["sessions"])


def session_view(record: SessionRecord) -> Session:
    """The API's view of a session: the record's fields, three of them renamed for clients."""
    values = asdict(record)
    return Session(
        session_id=values.pop("id"),
        labels=values.pop("label_map"),
        adapt_ms=round(values.pop("adapt_seconds") * 1000, 3),
        **values,
    )


@router.get("")
def list_sessions(
    store: StoreDep,
    page: Annotated[int, Query(ge=1)] = 1,
    size: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = 50,
) -> SessionPage:
    """Live sessions, newest first, `size` per page from page 1."""
    return SessionPage(page=page, size=size, sessions=[session_view(r) for r in store.list(page, size)])


@router.get("/{session_id}")
def get_session(session_id: str, store: StoreDep) -> Session:
    """A session; reading it counts as a use, so its life starts over."""
    record, _ = store.get(session_id)
    return session_view(record)


@router.delete("/{session_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_session(session_id: str, store: StoreDep) -> None:
    """Delete a session and its adapted parameters."""
    store.delete(session_id)
