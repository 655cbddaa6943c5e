"""The service's settings, read from METASERVE_* environment variables (pydantic-settings).

Each field's description is the configuration reference; `get_settings()` is the one instance the app uses.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.logs import LogFormat

__all__ = ["Settings", "get_settings"]

MiB = 2**20


class Settings(BaseSettings):
    """Where the service keeps its files, how it serves, and the limits it puts on a request."""

    model_config = SettingsConfigDict(env_prefix="METASERVE_", frozen=True)

    data_dir: Path = Field(
        default=Path("data"), description="Directory for the database and the sessions' adapted tensors."
    )
    database_url: str | None = Field(
        default=None,
        min_length=1,
        description="SQLAlchemy URL of the metadata database; unset means SQLite at <data_dir>/metaserve.db.",
    )
    models_dir: Path = Field(default=Path("models"), description="Directory of the shipped initializations.")
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="Device for adaptation and prediction; auto takes CUDA when available."
    )
    default_model: str = Field(
        default="sinusoid", min_length=1, description="Initialization used when a request names no model."
    )
    host: str = Field(default="127.0.0.1", min_length=1, description="Address the HTTP server listens on.")
    port: int = Field(default=8000, ge=1, le=65535, description="Port the HTTP server listens on.")
    session_ttl_seconds: int = Field(
        default=86400, gt=0, description="Seconds a session lives after its last use before it is deleted."
    )
    session_cache_bytes: int = Field(
        default=256 * MiB,
        gt=0,
        description="Device memory for the most recently used sessions' adapted tensors, in bytes.",
    )
    session_host_bytes: int = Field(
        default=1024 * MiB,
        ge=0,
        description="Host memory for the sessions' adapted tensors that the device evicts, in bytes; "
        "others are read from their files. On a CPU device both budgets are host memory, one LRU together.",
    )
    durable_writes: bool = Field(
        default=False,
        description="Fsync every session file and database commit before answering, so that an "
        "acknowledged session survives a power loss too (about 1 ms more per /adapt). Either way writes are "
        "atomic and survive any crash of the process.",
    )
    batching: bool = Field(
        default=True,
        description="Gather concurrent /adapt and /predict calls on one model into batches run as one "
        "computation; off serves every call on its own.",
    )
    max_batch: int = Field(default=64, ge=1, description="Most calls in one batch.")
    max_batch_delay_ms: float = Field(
        default=1.0,
        ge=0,
        allow_inf_nan=False,
        description="How long an idle batcher waits for more calls to join the first one, in milliseconds.",
    )
    max_queue: int = Field(
        default=1024,
        ge=1,
        description="Most /adapt (and, apart, /predict) calls waiting or running at once; more are refused "
        "with 503 and Retry-After.",
    )
    request_timeout_seconds: float = Field(
        default=30.0,
        gt=0,
        allow_inf_nan=False,
        description="Longest an /adapt or /predict call waits for its answer before a 503.",
    )
    compile: bool = Field(
        default=False,
        description="Run /adapt's inner steps and /predict's forward passes through torch.compile: less "
        "Python overhead per batch on a GPU, a compile of some seconds per new shape; no help on a CPU.",
    )
    worker_healthcheck_seconds: int = Field(
        default=60,
        ge=1,
        description="With `--workers N`, how long a worker may leave the parent's ping unanswered before it "
        "is killed as hung and replaced. A worker answers once its imports are done, which take seconds on a "
        "loaded machine: uvicorn's default of 5 killed starting workers over and over.",
    )
    drain_seconds: float = Field(
        default=3.0,
        ge=0,
        allow_inf_nan=False,
        description="After SIGTERM, how long the service answers new calls and /health/ready with 503 while "
        "the calls in flight finish, before it stops listening; a second SIGTERM or Ctrl-C stops at once.",
    )
    max_support: int = Field(default=1000, gt=0, description="Most support examples in one adaptation.")
    max_query: int = Field(default=10000, gt=0, description="Most query points in one prediction.")
    max_steps: int = Field(default=100, gt=0, description="Most inner steps one adaptation may ask for.")
    max_lr: float = Field(
        default=10.0,
        gt=0,
        allow_inf_nan=False,
        description="Largest inner learning rate one adaptation may ask for.",
    )
    max_body_bytes: int = Field(default=16 * MiB, gt=0, description="Largest HTTP request body, in bytes.")
    max_jobs: int = Field(default=1, ge=1, description="Meta-training jobs that run at once; others queue.")
    job_stale_seconds: float = Field(
        default=15.0,
        gt=0,
        description="A running job whose worker has not reported for this long is requeued, to resume "
        "from its last checkpoint.",
    )
    max_upload_bytes: int = Field(
        default=512 * MiB,
        gt=0,
        description="Largest dataset upload (POST /datasets), in bytes, enforced while it streams in; other "
        "requests keep the body limit.",
    )
    max_unpacked_bytes: int = Field(
        default=2048 * MiB,
        gt=0,
        description="Most bytes an uploaded archive (a zip of images, an npz) may unpack to.",
    )

    auth: bool = Field(
        default=True,
        description="Require an API key (header X-API-Key) on every route but /health; off lets anyone do "
        "anything, for local play only, and is logged as a warning at start.",
    )
    key_cache_seconds: float = Field(
        default=5.0,
        ge=0,
        allow_inf_nan=False,
        description="How long a process trusts a key it has verified without asking the database again, "
        "in seconds: a revoked key stops working within this time.",
    )
    rate_limit_per_second: float = Field(
        default=1000.0,
        ge=0,
        allow_inf_nan=False,
        description="Requests a second each API key may make to each service process, refused beyond with "
        "429 and Retry-After; 0 means no limit.",
    )
    rate_limit_burst: int = Field(
        default=2000, ge=1, description="Requests a key may make at once before its rate limit applies."
    )
    log_format: LogFormat = Field(
        default="auto",
        description="Log lines as json (one object a line: a request's id, route, status and duration; a "
        "job's id and state) or text for a person; auto is text when stderr is a terminal, json otherwise.",
    )

    @property
    def database_url_resolved(self) -> str:
        """`database_url`, or the SQLite file in `data_dir` when it is unset."""
        if self.database_url is not None:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'metaserve.db').as_posix()}"


@cache
def get_settings() -> Settings:
    """The settings from the environment, read once per process."""
    return Settings()
