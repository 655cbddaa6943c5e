"""Adapted sessions: the one inner loop run on a posted support set, the tensors it changed kept in a
safetensors file under the data directory, the metadata in the database, recent ones cached on the device."""

from __future__ import annotations

import builtins
import functools
import math
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save
from sqlalchemy import Select, delete, insert, select
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db.tables import AdaptedSession, Initialization, utc_now
from app.files import write_atomically
from app.meta import InnerLoop, Params, adapt
from app.serving.cache import ParamsCache
from app.serving.errors import NotFound
from app.serving.examples import Label, support_tensors
from app.serving.registry import LoadedModel, Registry

__all__ = ["MAX_PAGE_SIZE", "SESSIONS", "SessionRecord", "SessionStore"]

SESSIONS = "sessions"
"""The sessions' folder in the data directory."""
MAX_PAGE_SIZE = 1000
QUERY_CHUNK = 500
ORPHAN_MIN_AGE_SECONDS = 600.0
"""A session's file is written just before its row: a younger file without a row may be one in the making."""
TOUCH_AT_MOST = timedelta(seconds=1)
"""How stale a session's recorded last use may grow before a use is written."""


@dataclass(frozen=True)
class SessionRecord:
    """A session's metadata; ``model`` is its initialization as ``name@version``."""

    id: str
    model: str
    steps: int
    lr: float
    support_size: int
    label_map: list[Label] | None
    loss_before: float
    loss_after: float
    adapt_seconds: float
    created: datetime
    last_used: datetime
    expires: datetime

    @classmethod
    def of(cls, row: AdaptedSession | Mapping[str, Any], model: str) -> SessionRecord:
        """The record of a ``sessions`` row (an ORM object or its column values), whose columns carry the
        same names."""
        value = row.__getitem__ if isinstance(row, Mapping) else functools.partial(getattr, row)
        return cls(model=model, **{f.name: value(f.name) for f in fields(cls) if f.name != "model"})


class SessionStore:
    """Sessions of the registry's models: files ``sessions/<id>.safetensors`` in the data directory
    (the row's ``path`` is relative to it), rows in ``sessions``, and ``cache``, the device LRU of the
    stored tensors, with its hit, miss and eviction counts. A session lives ``session_ttl_seconds`` after
    its last use."""

    def __init__(
        self, settings: Settings, session_factory: sessionmaker[Session], registry: Registry
    ) -> None:
        self.settings = settings
        self.directory = Path(settings.data_dir) / SESSIONS
        self.directory.mkdir(parents=True, exist_ok=True)
        self.registry = registry
        self.cache = ParamsCache(settings.session_cache_bytes)
        self._db = session_factory
        self._ttl = timedelta(seconds=settings.session_ttl_seconds)
        self._touch = min(self._ttl / 100, TOUCH_AT_MOST)

    def create(
        self,
        model: LoadedModel,
        x: list[Any],
        y: list[Any],
        steps: int | None = None,
        lr: float | None = None,
    ) -> SessionRecord:
        """Adapt ``model`` to the support set ``(x, y)`` (see ``support_tensors``) with ``steps`` inner steps
        of ``lr`` (the card's defaults when None; learned inner rates in the parameters take precedence)."""
        steps, lr = self._checked(model, steps, lr)
        inner = InnerLoop(steps, lr, model.inner.adapts)
        support_x, support_y, label_map = support_tensors(model, x, y, self.settings.max_support)
        started = time.perf_counter()
        adapted = adapt(model.learner, model.params, support_x, support_y, inner)
        if model.device.type == "cuda":
            torch.cuda.synchronize(model.device)
        seconds = time.perf_counter() - started
        with torch.no_grad():
            before = float(model.learner.losses(model.params, support_x, support_y))
            after = float(model.learner.losses(adapted, support_x, support_y))
        # A non-finite loss means unusable parameters (and SQLite would store NaN as NULL): refuse it.
        if not math.isfinite(before):
            raise ValueError(f"support: the initialization's loss on it is {before}; scale the data down")
        if not math.isfinite(after):
            raise ValueError(
                f"lr: adaptation diverged (support loss {before:.4g}, then {after}); lower lr or steps"
            )
        changed = {k: v.detach() for k, v in adapted.items() if inner.adapted(k)}
        session_id = secrets.token_urlsafe(32)
        path = f"{SESSIONS}/{session_id}.safetensors"
        tensors = save({k: v.cpu().contiguous() for k, v in changed.items()})
        write_atomically(self.settings.data_dir / path, tensors, durable=self.settings.durable_writes)
        now = utc_now()
        row = {
            "id": session_id,
            "initialization_id": model.id,
            "steps": steps,
            "lr": lr,
            "support_size": len(support_x),
            "label_map": label_map,
            "loss_before": before,
            "loss_after": after,
            "adapt_seconds": seconds,
            "created": now,
            "last_used": now,
            "expires": now + self._ttl,
            "path": path,
        }
        try:
            # A Core insert: a third of the ORM's unit-of-work cost, on the busiest write of the service.
            with self._db.begin() as db:
                db.connection().execute(_INSERT, row)
        except BaseException:
            (self.settings.data_dir / path).unlink(missing_ok=True)
            raise
        self.cache.put(session_id, changed)
        return SessionRecord.of(row, model.ref)

    def get(self, session_id: str) -> tuple[SessionRecord, Params]:
        """The session and its parameters (its tensors over the initialization's); counts as a use, which is
        written when the last one recorded is older than 1% of the TTL or ``TOUCH_AT_MOST``, so that a busy
        session costs a read, not a write, per request."""
        now = utc_now()
        with self._db.begin() as db:
            found = db.execute(_with_model().where(AdaptedSession.id == session_id)).one_or_none()
            if found is None or found[0].expires <= now:
                raise NotFound(f"no session {session_id!r}: unknown, deleted or expired")
            row, name, version = found
            if now - row.last_used >= self._touch:
                row.last_used, row.expires = now, now + self._ttl
            record, path = SessionRecord.of(row, f"{name}@{version}"), row.path
        try:
            model = self.registry.get(record.model)
        except NotFound:
            raise NotFound(
                f"session {session_id!r} was adapted from {record.model}, which is not loaded"
            ) from None
        changed = self.cache.get(session_id)
        if changed is None:
            try:
                changed = load_file(self.settings.data_dir / path, device=str(model.device))
            except FileNotFoundError:
                raise NotFound(f"no session {session_id!r}: deleted while it was being read") from None
            self.cache.put(session_id, changed)
        return record, {**model.params, **changed}

    def delete(self, session_id: str) -> None:
        """Delete the row, then the file: a crash in between leaves an orphan file, not a row without one."""
        with self._db.begin() as db:
            row = db.get(AdaptedSession, session_id)
            if row is None:
                raise NotFound(f"no session {session_id!r}")
            path = row.path
            db.delete(row)
        self._forget(session_id, path)

    def list(self, page: int = 1, size: int = 50) -> builtins.list[SessionRecord]:
        """Live sessions, newest first, ``size`` per page from page 1."""
        if page < 1:
            raise ValueError(f"page: must be >= 1; got {page}")
        if not 1 <= size <= MAX_PAGE_SIZE:
            raise ValueError(f"size: must be from 1 to {MAX_PAGE_SIZE}; got {size}")
        query = (
            _with_model()
            .where(AdaptedSession.expires > utc_now())
            .order_by(AdaptedSession.created.desc(), AdaptedSession.id)
            .offset((page - 1) * size)
            .limit(size)
        )
        with self._db() as db:
            return [SessionRecord.of(row, f"{name}@{version}") for row, name, version in db.execute(query)]

    def sweep_expired(self, now: datetime | None = None) -> int:
        """Delete the sessions expired at ``now`` (default: the current time), rows then files; returns
        how many."""
        cutoff = utc_now() if now is None else now
        expired = delete(AdaptedSession).where(AdaptedSession.expires <= cutoff)
        with self._db.begin() as db:
            gone = db.execute(expired.returning(AdaptedSession.id, AdaptedSession.path)).all()
        for session_id, path in gone:
            self._forget(session_id, path)
        return len(gone)

    def sweep_orphans(self, min_age_seconds: float = ORPHAN_MIN_AGE_SECONDS) -> int:
        """Delete session files (and leftover temporary files) older than ``min_age_seconds`` that no row
        names; returns how many."""
        cutoff = time.time() - min_age_seconds
        old = [
            f"{SESSIONS}/{p.name}"
            for p in self.directory.iterdir()
            if p.is_file() and p.stat().st_mtime <= cutoff
        ]
        named: set[str] = set()
        with self._db() as db:
            for start in range(0, len(old), QUERY_CHUNK):
                chunk = old[start : start + QUERY_CHUNK]
                named.update(db.scalars(select(AdaptedSession.path).where(AdaptedSession.path.in_(chunk))))
        orphans = [path for path in old if path not in named]
        for orphan in orphans:
            (self.settings.data_dir / orphan).unlink(missing_ok=True)
        return len(orphans)

    def _checked(self, model: LoadedModel, steps: int | None, lr: float | None) -> tuple[int, float]:
        """The inner steps and learning rate asked for, or the card's, within the settings' limits."""
        count = model.inner.steps if steps is None else steps
        rate = model.inner.lr if lr is None else lr
        limits = self.settings
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= limits.max_steps:
            raise ValueError(f"steps: must be an integer from 1 to {limits.max_steps}; got {count!r}")
        if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 < rate <= limits.max_lr:
            raise ValueError(f"lr: must be a number above 0 and at most {limits.max_lr}; got {rate!r}")
        return count, float(rate)

    def _forget(self, session_id: str, path: str) -> None:
        (self.settings.data_dir / path).unlink(missing_ok=True)
        self.cache.discard(session_id)


_INSERT = insert(AdaptedSession)


def _with_model() -> Select[AdaptedSession, str, int]:
    """Sessions with the name and version of their initialization."""
    return select(AdaptedSession, Initialization.name, Initialization.version).join(Initialization)
