"""The HTTP API's request and response bodies (pydantic), shared by the routes and the client.

The examples are runnable as they stand: pasted into /docs they adapt and query the shipped sinusoid.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import Query
from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.json_schema import JsonDict

from app.jobs.spec import JobSpec

__all__ = [
    "MAX_PAGE",
    "AdaptRequest",
    "Classification",
    "Dataset",
    "Health",
    "Inner",
    "Job",
    "JobMetric",
    "JobPage",
    "JobSpec",
    "Label",
    "ModelDetail",
    "ModelSummary",
    "ModelVersion",
    "PageNumber",
    "PredictRequest",
    "Prediction",
    "Problem",
    "Promote",
    "Session",
    "SessionPage",
    "Support",
]

Label = str | int
"""A class label as the support set gave it."""

MAX_PAGE = 1_000_000
"""Highest page number of a list: far past any real listing, and its offset fits the database's integers."""
PageNumber = Annotated[int, Query(ge=1, le=MAX_PAGE)]
"""The ``page`` query parameter of every list route."""

EXAMPLES_DOC = (
    "Numbers (or nested lists of numbers) in the model's input shape; a model that takes one-channel square "
    "images also accepts each example as a base64-encoded PNG string, resized and converted to grey."
)
SUPPORT_EXAMPLE: JsonDict = {"x": [-2.0, -1.0, 0.0, 1.0, 2.0], "y": [-0.9093, -0.8415, 0.0, 0.8415, 0.9093]}


class Support(BaseModel):
    """The support set: examples and, one per example, a target (regression) or a class label."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [SUPPORT_EXAMPLE]})

    x: list[Any] = Field(description=f"The support examples. {EXAMPLES_DOC}")
    y: list[Any] = Field(
        description="One per example: a number (or list of numbers) for a regressor, a string or integer "
        "class label for a classifier; a classifier's head class i is the i-th distinct label."
    )


class AdaptRequest(BaseModel):
    """Adapt an initialization to a support set; the answer names the new session."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"model": "sinusoid", "support": SUPPORT_EXAMPLE, "steps": 10}]},
    )

    model: str | None = Field(
        default=None, description="`name` or `name@version`; the service's default model when omitted."
    )
    support: Support
    # Strict numbers: the schema says integer and number, so "10" or 10.0 steps are refused, not coerced.
    steps: int | None = Field(
        default=None, ge=1, strict=True, description="Inner steps; the model card's when omitted."
    )
    lr: float | None = Field(
        default=None, gt=0, strict=True, description="Inner learning rate; the card's when omitted."
    )


class PredictRequest(BaseModel):
    """Query a session, or an initialization as it is (not adapted): exactly one of the two."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"model": "sinusoid", "x": [-1.5, 0.0, 1.5]}]}
    )

    session_id: str | None = Field(default=None, description="A session from POST /adapt.")
    model: str | None = Field(default=None, description="`name` or `name@version`, to query it un-adapted.")
    x: list[Any] = Field(description=f"The query examples. {EXAMPLES_DOC}")

    @model_validator(mode="after")
    def _one_target(self) -> PredictRequest:
        if (self.session_id is None) == (self.model is None):
            raise ValueError("give exactly one of session_id (an adapted session) and model (un-adapted)")
        return self


class Session(BaseModel):
    """An adapted session: what it was adapted from and with, how far the support loss fell, when it ends."""

    session_id: str
    model: str = Field(description="The initialization, as `name@version`.")
    steps: int
    lr: float
    support_size: int
    labels: list[Label] | None = Field(description="Class labels in head order; null for a regressor.")
    loss_before: float = Field(description="Support loss of the initialization.")
    loss_after: float = Field(description="Support loss after adaptation.")
    adapt_ms: float
    created: datetime
    last_used: datetime
    expires: datetime = Field(description="When the session is deleted unless it is used again.")


class SessionPage(BaseModel):
    """Live sessions, newest first."""

    page: int
    size: int
    sessions: list[Session]


class Classification(BaseModel):
    """One query's most probable label and the probability of every label."""

    label: Label
    probabilities: dict[str, float]


class Prediction(BaseModel):
    """Predictions in query order: numbers (a list per query for several targets) or classifications."""

    model: str = Field(description="The initialization, as `name@version`.")
    session_id: str | None
    predictions: list[float] | list[list[float]] | list[Classification]


class Inner(BaseModel):
    """The card's inner-loop defaults."""

    steps: int
    lr: float | tuple[float, ...] = Field(description="One rate for every step, or one per step.")
    adapts: Literal["all", "head"] = Field(description="Which tensors adapt: all, or the head only.")


class ModelSummary(BaseModel):
    """A loaded initialization and what its requests must match."""

    name: str
    version: int
    ref: str = Field(description="`name@version`.")
    default: bool = Field(
        description="Whether requests that give this name without a version get this version (see POST "
        "/models/{name}/promote); requests that name no model get the default model's default version."
    )
    algorithm: str
    family: str
    kind: Literal["regression", "classification"]
    ways: int = Field(description="Width of the head: classes (classification) or targets (regression).")
    input_shape: list[int]
    inner: Inner


class ModelVersion(ModelSummary):
    """A version with its model card (config, training, command, sha256) and its recorded metrics."""

    card: dict[str, Any]
    metrics: dict[str, Any]


class ModelDetail(BaseModel):
    """Every loaded version of one model, oldest first."""

    name: str
    versions: list[ModelVersion]


DATASET_EXAMPLE: JsonDict = {
    "dataset_id": "Xq3vJ9kR2mWb7tLs0aYc4g",
    "name": "omniglot-background",
    "kind": "classification",
    "format": "zip",
    "size_bytes": 9464212,
    "examples": 19280,
    "classes": 964,
    "details": {
        "family": "folder",
        "input_shape": [1, 28, 28],
        "checked": {"seed": 0, "ways": 5, "shots": 1, "queries": 1},
        "classes": {"train": 680, "val": 96, "test": 188},
        "source": "omniglot-background",
        "layout": "alphabet/character",
        "examples": 19280,
        "image_size": 28,
    },
    "created": "2026-11-30T09:12:44Z",
}


class Dataset(BaseModel):
    """An uploaded dataset, checked by building its task family as meta-training will."""

    model_config = ConfigDict(json_schema_extra={"examples": [DATASET_EXAMPLE]})

    dataset_id: str
    name: str
    kind: Literal["regression", "classification"]
    format: str = Field(description="npz, csv or zip.")
    size_bytes: int = Field(description="Bytes stored: the file, or the zip's extracted images.")
    examples: int
    classes: int | None = Field(description="Classes over all splits; null for regression.")
    details: dict[str, Any] = Field(
        description="The task family (`arrays` or `folder`), the input shape, the classes (or tasks) of each "
        "split and the task shape the upload was checked with."
    )
    created: datetime


class Job(BaseModel):
    """A meta-training job: its spec, where it stands, and what it published."""

    job_id: str
    state: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    spec: JobSpec
    iteration: int = Field(description="Meta-updates done (as last reported).")
    progress: float = Field(description="Fraction of the iterations done.")
    error: str | None = Field(description="Why it failed.")
    model: str | None = Field(description="What it published, as `name@version`, once it has succeeded.")
    created: datetime
    started: datetime | None
    finished: datetime | None
    heartbeat: datetime | None = Field(description="When its worker last reported.")


class JobPage(BaseModel):
    """Jobs, newest first."""

    page: int
    size: int
    jobs: list[Job]


class JobMetric(BaseModel):
    """One validation point of a job: the training loss at that iteration and the meta-validation figures."""

    id: int = Field(description="Grows with each point; GET /jobs/{id}/metrics?after=ID gives newer ones.")
    iteration: int
    train_loss: float | None
    val_loss: float
    val_accuracy: float | None = Field(description="Null for regression.")
    created: datetime


class Promote(BaseModel):
    """Which version of the model bare-name requests get from now on."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"version": 1}]})

    version: int = Field(ge=1, strict=True)


class Problem(BaseModel):
    """Why a request failed (any error status but 422, which lists each invalid field)."""

    detail: str


class Health(BaseModel):
    """The service's state."""

    status: Literal["live", "ready"]
