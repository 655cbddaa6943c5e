"""The metadata database's tables (SQLAlchemy 2 ORM): initializations, sessions, datasets, jobs, job metrics,
API keys.

Rows hold metadata; tensors live in files under the data directory, named by a row's ``path``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    ColumnElement,
    DateTime,
    Dialect,
    Double,
    ForeignKey,
    Index,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    true,
)
from sqlalchemy.orm import DeclarativeBase, InstrumentedAttribute, Mapped, mapped_column

__all__ = [
    "JOB_STATES",
    "NAMING_CONVENTION",
    "AdaptedSession",
    "ApiKey",
    "Base",
    "Dataset",
    "Initialization",
    "Job",
    "JobMetric",
    "UTCDateTime",
    "utc_now",
    "visible_to",
]

JOB_STATES = ("queued", "running", "succeeded", "failed", "cancelled")

# Every constraint and index gets a predictable name, so a migration can alter or drop it by name on every
# database (SQLite's batch rebuilds need the names too).
NAMING_CONVENTION = {
    "pk": "pk_%(table_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
}


def utc_now() -> datetime:
    """The current time, timezone-aware in UTC."""
    return datetime.now(UTC)


def visible_to(owner: InstrumentedAttribute[str | None], scope: str | None) -> ColumnElement[bool]:
    """The condition that a row whose owner column is ``owner`` belongs to ``scope``, an API key's id (None:
    any row, for an admin key or with auth off)."""
    return true() if scope is None else owner == scope


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every database. SQLite stores no zone, so values are written in UTC
    and read back as UTC; a naive datetime is refused rather than guessed."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value.isoformat()}: give a timezone, e.g. datetime.now(UTC)")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    """The tables' common base: named constraints, and UTC datetimes for every ``Mapped[datetime]``."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    # float is spelled out because SQLAlchemy 2.0 maps it to Float and 2.1 to Double (the migration's type).
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UTCDateTime, float: Double}


class Initialization(Base):
    """A meta-trained model version (``name@version``): its model card and the folder of its weights."""

    __tablename__ = "initializations"
    __table_args__ = (UniqueConstraint("name", "version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]
    version: Mapped[int]
    algorithm: Mapped[str]
    family: Mapped[str]
    net: Mapped[dict[str, Any]] = mapped_column(JSON)
    card: Mapped[dict[str, Any]] = mapped_column(JSON)
    sha256: Mapped[str] = mapped_column(String(64))
    path: Mapped[str]
    created: Mapped[datetime] = mapped_column(default=utc_now)
    is_default: Mapped[bool] = mapped_column(default=False)


class AdaptedSession(Base):
    """A session: an initialization adapted to one support set. ``path`` is the safetensors file of the
    tensors adaptation changed, ``owner`` the id of the API key that made it (None: made with auth off).
    (Not called ``Session``, which is SQLAlchemy's unit of work.)"""

    __tablename__ = "sessions"

    id: Mapped[str] = mapped_column(String(43), primary_key=True)
    initialization_id: Mapped[int] = mapped_column(
        ForeignKey("initializations.id", ondelete="RESTRICT"), index=True
    )
    steps: Mapped[int]
    lr: Mapped[float]
    support_size: Mapped[int]
    label_map: Mapped[list[Any] | None] = mapped_column(JSON)  # class labels in head order; None: regression
    loss_before: Mapped[float]
    loss_after: Mapped[float]
    adapt_seconds: Mapped[float]
    created: Mapped[datetime] = mapped_column(default=utc_now, index=True)
    last_used: Mapped[datetime] = mapped_column(index=True)
    expires: Mapped[datetime] = mapped_column(index=True)
    path: Mapped[str]
    owner: Mapped[str | None] = mapped_column(String(32), index=True)


class Dataset(Base):
    """An uploaded data set for meta-training, stored at ``path``."""

    __tablename__ = "datasets"

    id: Mapped[str] = mapped_column(primary_key=True)
    name: Mapped[str]
    kind: Mapped[str]
    format: Mapped[str]
    path: Mapped[str]
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    examples: Mapped[int]
    classes: Mapped[int | None]  # None for regression data
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created: Mapped[datetime] = mapped_column(default=utc_now)
    owner: Mapped[str | None] = mapped_column(String(32), index=True)


class Job(Base):
    """A meta-training job: its spec, where it stands, and the initialization it produced."""

    __tablename__ = "jobs"
    __table_args__ = (CheckConstraint(f"state IN ({', '.join(map(repr, JOB_STATES))})", name="state"),)

    id: Mapped[str] = mapped_column(primary_key=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(16), default="queued")
    dataset_id: Mapped[str | None] = mapped_column(ForeignKey("datasets.id"), index=True)
    progress: Mapped[float] = mapped_column(default=0.0)
    iteration: Mapped[int] = mapped_column(default=0)
    error: Mapped[str | None] = mapped_column(Text)
    result_initialization_id: Mapped[int | None] = mapped_column(ForeignKey("initializations.id"), index=True)
    created: Mapped[datetime] = mapped_column(default=utc_now)
    started: Mapped[datetime | None]
    finished: Mapped[datetime | None]
    worker_pid: Mapped[int | None]
    heartbeat: Mapped[datetime | None]
    owner: Mapped[str | None] = mapped_column(String(32), index=True)


class JobMetric(Base):
    """One evaluation point of a running job; deleted with its job."""

    __tablename__ = "job_metrics"
    __table_args__ = (Index("ix_job_metrics_job_id_iteration", "job_id", "iteration"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    iteration: Mapped[int]
    train_loss: Mapped[float | None]
    val_loss: Mapped[float | None]
    val_accuracy: Mapped[float | None]
    created: Mapped[datetime] = mapped_column(default=utc_now)


class ApiKey(Base):
    """An API key: only the sha256 of its secret is kept; a revoked key stays, so its rows keep an owner."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    hash: Mapped[str] = mapped_column(String(64))
    admin: Mapped[bool] = mapped_column(default=False)
    created: Mapped[datetime] = mapped_column(default=utc_now)
    revoked_at: Mapped[datetime | None]
