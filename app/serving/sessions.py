"""Adapted sessions: the one inner loop run on a posted support set, the tensors it changed kept in a
safetensors file under the data directory, the metadata in the database, recent ones cached on the device."""

from __future__ import annotations

import builtins
import functools
import logging
import math
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors import SafetensorError, TensorSpec, serialize
from safetensors.torch import load_file
from sqlalchemy import BindParameter, Select, bindparam, delete, insert, select, update
from sqlalchemy.orm import Session, sessionmaker
from torch import Tensor

from app.config import Settings
from app.db.tables import AdaptedSession, Initialization, utc_now, visible_to
from app.files import write_new
from app.meta import InnerLoop, Params
from app.meta.flat import Flat, Layout, flatten
from app.meta.functional import net_params
from app.meta.nets import is_head
from app.meta.stacked import Adaptation, adapt_many
from app.serving.cache import SessionCache
from app.serving.errors import Conflict, NotFound
from app.serving.examples import Label, support_tensors
from app.serving.registry import LoadedModel, Registry

__all__ = ["MAX_PAGE_SIZE", "SESSIONS", "Opened", "SessionRecord", "SessionStore", "SupportSet"]

Result = TypeVar("Result")

SESSIONS = "sessions"
"""The sessions' folder in the data directory."""
MAX_PAGE_SIZE = 1000
QUERY_CHUNK = 500
ORPHAN_MIN_AGE_SECONDS = 600.0
"""A session's file is written just before its row: while another process serves the data directory, a
younger file without a row may be one in the making."""
TOUCH_AT_MOST = timedelta(seconds=1)
"""How stale a session's recorded last use may grow before a use is written."""

logger = logging.getLogger(__name__)


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
        return cls(model=model, **{name: value(name) for name in _COLUMNS})


_COLUMNS = tuple(f.name for f in fields(SessionRecord) if f.name != "model")
"""The record's fields that are columns of a ``sessions`` row, by the same names."""


@dataclass(frozen=True)
class SupportSet:
    """One adaptation asked for: a model, the support set as the request gave it, steps and rate (None:
    the card's), and the API key that will own the session (None: made with auth off)."""

    model: LoadedModel
    x: builtins.list[Any]
    y: builtins.list[Any]
    steps: int | None = None
    lr: float | None = None
    owner: str | None = None


@dataclass(frozen=True)
class Opened:
    """A live session: its record, its model, and the tensors adaptation changed."""

    record: SessionRecord
    model: LoadedModel
    changed: Flat


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
        self.cache = SessionCache(registry.device, settings.session_cache_bytes, settings.session_host_bytes)
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
        return _one(self.create_many([SupportSet(model, x, y, steps, lr)]))

    def create_many(self, supports: Sequence[SupportSet]) -> builtins.list[SessionRecord | Exception]:
        """Open a session for each support set, or give its error (a ``ValueError`` naming the field);
        sets of one model with the same steps and rate adapt as one batch, and every row is written in
        one transaction. A session's ``adapt_seconds`` is the time of the batch it adapted in."""
        results: builtins.list[SessionRecord | Exception] = [ValueError("support: not adapted")] * len(
            supports
        )
        batches: dict[
            tuple[str, int, float], builtins.list[tuple[int, Tensor, Tensor, builtins.list[Label] | None]]
        ]
        batches = {}
        for i, support in enumerate(supports):
            try:
                steps, lr = self._checked(support.model, support.steps, support.lr)
                # What Learner.check would check, support_tensors guarantees: shapes, finite float32
                # inputs and targets, labels within the head's classes.
                x, y, label_map = support_tensors(
                    support.model, support.x, support.y, self.settings.max_support
                )
            except (ValueError, TypeError) as error:
                results[i] = error
                continue
            batches.setdefault((support.model.ref, steps, lr), []).append((i, x, y, label_map))
        rows: builtins.list[tuple[int, dict[str, Any], Flat]] = []
        for (_, steps, lr), members in batches.items():
            model = supports[members[0][0]].model
            inner = InnerLoop(steps, lr, model.inner.adapts)
            started = time.perf_counter()
            examples = [(x, y) for _, x, y, _ in members]
            adapted = adapt_many(model.learner, model.params, examples, inner, self.settings.compile)
            if model.device.type == "cuda":
                torch.cuda.synchronize(model.device)
            seconds = time.perf_counter() - started
            hosts = _on_host([adaptation.changed.tensor for adaptation in adapted])
            for (i, x, _, label_map), adaptation, host in zip(members, adapted, hosts, strict=True):
                try:
                    rows.append(
                        (
                            i,
                            {
                                **self._written(
                                    model, steps, lr, len(x), label_map, adaptation, host, seconds
                                ),
                                "owner": supports[i].owner,
                            },
                            adaptation.changed,
                        )
                    )
                except ValueError as error:
                    results[i] = error
        if not rows:
            return results
        try:
            # A Core insert: a third of the ORM's unit-of-work cost, on the busiest write of the service.
            with self._db.begin() as db:
                db.connection().execute(_INSERT, [row for _, row, _ in rows])
        except BaseException:
            for _, row, _ in rows:
                (self.settings.data_dir / row["path"]).unlink(missing_ok=True)
            raise
        for i, row, changed in rows:
            self.cache.put(row["id"], changed)
            results[i] = SessionRecord.of(row, supports[i].model.ref)
        return results

    def _written(
        self,
        model: LoadedModel,
        steps: int,
        lr: float,
        size: int,
        label_map: builtins.list[Label] | None,
        adaptation: Adaptation,
        host: Tensor,
        seconds: float,
    ) -> dict[str, Any]:
        """Check an adaptation's losses, write its file from ``host`` (its tensor on the host), and return the
        row that will name it."""
        before, after = adaptation.loss_before, adaptation.loss_after
        # A non-finite loss means unusable parameters (and SQLite would store NaN as NULL): refuse it.
        if not math.isfinite(before):
            raise ValueError(f"support: the initialization's loss on it is {before}; scale the data down")
        if not math.isfinite(after):
            raise ValueError(
                f"lr: adaptation diverged (support loss {before:.4g}, then {after}); lower lr or steps"
            )
        session_id = secrets.token_urlsafe(32)
        path = f"{SESSIONS}/{session_id}.safetensors"
        tensors = _serialized(host, adaptation.changed.layout)
        write_new(self.settings.data_dir / path, tensors, durable=self.settings.durable_writes)
        now = utc_now()
        return {
            "id": session_id,
            "initialization_id": model.id,
            "steps": steps,
            "lr": lr,
            "support_size": size,
            "label_map": label_map,
            "loss_before": before,
            "loss_after": after,
            "adapt_seconds": seconds,
            "created": now,
            "last_used": now,
            "expires": now + self._ttl,
            "path": path,
        }

    def get(self, session_id: str, scope: str | None = None) -> tuple[SessionRecord, Params]:
        """The session and its parameters (its tensors over the initialization's); see ``open_many``."""
        opened = _one(self.open_many([session_id], [scope]))
        return opened.record, {**opened.model.params, **opened.changed.params()}

    def open_many(
        self, session_ids: Sequence[str], scopes: Sequence[str | None] | None = None
    ) -> builtins.list[Opened | Exception]:
        """Each session with its model and adapted tensors, or ``NotFound``, also for a session that its
        scope (the owner asking for it; None: anyone) does not own; read in one query. Each counts as a use,
        which is written when the last one recorded is older than 1% of the TTL or ``TOUCH_AT_MOST``, so
        that a busy session costs a read, not a write, per request."""
        if not session_ids:
            return []
        asked = builtins.list(zip(session_ids, scopes or [None] * len(session_ids), strict=True))
        scopes_of: dict[str, set[str | None]] = {}
        for session_id, scope in asked:
            scopes_of.setdefault(session_id, set()).add(scope)
        now = utc_now()
        used = {"last_used": now, "expires": now + self._ttl}
        found: dict[str, tuple[SessionRecord, str]] = {}
        owners: dict[str, str | None] = {}
        touched: builtins.list[str] = []
        # Core statements built once, not the ORM: this read serves every /predict batch, and building,
        # compiling and mapping a statement per call cost more than running it.
        with self._db.begin() as db:
            rows = db.connection().execute(_OPEN_MANY, {"ids": builtins.list(scopes_of)}).mappings()
            for mapping in rows:
                row: Mapping[Any, Any] = mapping
                if row["expires"] <= now or scopes_of[row["id"]].isdisjoint((None, row["owner"])):
                    continue
                owners[row["id"]] = row["owner"]
                if now - row["last_used"] >= self._touch:
                    touched.append(row["id"])
                    row = {**row, **used}
                model = f"{row['model_name']}@{row['model_version']}"
                found[row["id"]] = SessionRecord.of(row, model), row["path"]
            if touched:
                db.connection().execute(_TOUCH_MANY, {"ids": touched, **used})
        mine = [scope in (None, owners.get(session_id)) for session_id, scope in asked]
        return [self._opened(i, found.get(i) if ok else None) for (i, _), ok in zip(asked, mine, strict=True)]

    def _opened(self, session_id: str, found: tuple[SessionRecord, str] | None) -> Opened | Exception:
        if found is None:
            return NotFound(f"no session {session_id!r}: unknown, deleted or expired")
        record, path = found
        try:
            model = self.registry.get(record.model)
        except NotFound:
            return NotFound(f"session {session_id!r} was adapted from {record.model}, which is not loaded")
        changed = self.cache.get(session_id)
        if changed is None:
            try:
                changed = _laid_out(model, load_file(self.settings.data_dir / path, device=str(model.device)))
            except FileNotFoundError:
                return NotFound(f"no session {session_id!r}: deleted while it was being read")
            except (SafetensorError, OSError, ValueError) as error:
                # One damaged file (a disk fault, a hand edit) costs its session only, never the server.
                logger.error("session %s: cannot read %s: %s", session_id, path, error)
                return Conflict(
                    f"session {session_id!r}: its adapted parameters are unreadable (a corrupt, truncated "
                    "or foreign file); delete it and adapt again"
                )
            self.cache.put(session_id, changed)
        return Opened(record, model, changed)

    def delete(self, session_id: str, scope: str | None = None) -> None:
        """Delete the row, then the file: a crash in between leaves an orphan file, not a row without one.
        One statement finds and deletes the row, so of two concurrent deletes one wins and one gets 404, as
        does a ``scope`` (an owner; None: anyone) that does not own it."""
        gone = (
            delete(AdaptedSession)
            .where(AdaptedSession.id == session_id, visible_to(AdaptedSession.owner, scope))
            .returning(AdaptedSession.path)
        )
        with self._db.begin() as db:
            path = db.execute(gone).scalar_one_or_none()
        if path is None:
            raise NotFound(f"no session {session_id!r}")
        self._forget(session_id, path)

    def list(self, page: int = 1, size: int = 50, scope: str | None = None) -> builtins.list[SessionRecord]:
        """Live sessions of ``scope`` (an owner; None: all), newest first, ``size`` per page from page 1."""
        if page < 1:
            raise ValueError(f"page: must be >= 1; got {page}")
        if not 1 <= size <= MAX_PAGE_SIZE:
            raise ValueError(f"size: must be from 1 to {MAX_PAGE_SIZE}; got {size}")
        query = (
            _with_model()
            .where(AdaptedSession.expires > utc_now(), visible_to(AdaptedSession.owner, scope))
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
_IDS: BindParameter[list[str]] = bindparam("ids", expanding=True)
_OPEN_MANY = (
    select(
        *AdaptedSession.__table__.columns,
        Initialization.name.label("model_name"),
        Initialization.version.label("model_version"),
    )
    .join(Initialization)
    .where(AdaptedSession.id.in_(_IDS))
)
_TOUCH_MANY = (
    update(AdaptedSession)
    .where(AdaptedSession.id.in_(_IDS))
    .values(last_used=bindparam("last_used"), expires=bindparam("expires"))
)


def _on_host(tensors: Sequence[Tensor]) -> builtins.list[Tensor]:
    """A batch's flat tensors (one layout) on the host, for their files: from a device in one copy, where a
    copy each would wait on the device once per session; on a CPU as they are."""
    if not tensors or tensors[0].device.type == "cpu":
        return builtins.list(tensors)
    return builtins.list(torch.stack(builtins.list(tensors)).cpu().unbind())


def _serialized(host: Tensor, layout: Layout) -> bytes:
    """The safetensors bytes of a session's tensors, laid out by ``layout`` in its one ``host`` tensor: the
    same bytes as ``safetensors.torch.save`` in a fifth of its time (a file is written per /adapt), each
    tensor named by where it lies, with no array or view made per tensor."""
    base, item, dtype = host.data_ptr(), host.element_size(), str(host.dtype).removeprefix("torch.")
    return bytes(
        serialize(
            {
                s.name: TensorSpec(
                    dtype=dtype, shape=s.shape, data_ptr=base + s.offset * item, data_len=s.size * item
                )
                for s in layout
            }
        )
    )


def _laid_out(model: LoadedModel, loaded: Params) -> Flat:
    """A session file's tensors as the set ``model``'s sessions change, in its order; a readable file of
    other tensors is refused, since it would otherwise fail the whole batch it is predicted in."""
    adapted = {k: v for k, v in net_params(model.params).items() if model.inner.adapts == "all" or is_head(k)}
    if {k: v.shape for k, v in loaded.items()} != {k: v.shape for k, v in adapted.items()} or any(
        v.dtype != adapted[k].dtype for k, v in loaded.items()
    ):
        raise ValueError(f"its tensors {sorted(loaded)} are not the ones {model.ref} adapts")
    return flatten({k: loaded[k] for k in adapted})


def _one(results: Sequence[Result | Exception]) -> Result:
    """The only result of a batch of one, or its error raised."""
    (result,) = results
    if isinstance(result, Exception):
        raise result
    return result


def _with_model() -> Select[AdaptedSession, str, int]:
    """Sessions with the name and version of their initialization."""
    return select(AdaptedSession, Initialization.name, Initialization.version).join(Initialization)
