"""What a job trains: a ``metaserve train`` recipe on a generated family or an uploaded dataset, the name
to publish the result as, and how many processes train it."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.training import TrainSpec

__all__ = ["MODEL_NAME", "JobSpec"]

DEFAULTS = TrainSpec()
MODEL_NAME = r"^[a-z0-9][a-z0-9_-]{0,62}$"
"""Model names: lower case, digits, '-' and '_', so that a name is also a safe directory name."""

Algorithm = Literal["maml", "fomaml", "anil", "metasgd", "reptile"]
"""The engine's ``ALGORITHMS`` (a test keeps the two equal)."""


class JobSpec(BaseModel):
    """A meta-training job: exactly one of ``family`` (generated tasks) and ``dataset_id`` (an upload)."""

    # Strict: the API's schema says integer and number, so "10" or 10.0 iterations are refused, not coerced.
    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "examples": [
                {"name": "my-sinusoid", "family": "sinusoid", "iterations": 200, "val_every": 50},
            ]
        },
    )

    name: str = Field(pattern=MODEL_NAME, description="Publish the result as `name@<next version>`.")
    family: Literal["sinusoid", "glyphs"] | None = Field(
        default=None, description="A generated task family; give this or `dataset_id`."
    )
    dataset_id: str | None = Field(default=None, description="An uploaded dataset (POST /datasets).")
    algorithm: Algorithm = "maml"
    net: Literal["auto", "mlp", "conv4"] = "auto"
    hidden: int = Field(DEFAULTS.hidden, ge=1, le=1024, description="Conv4 channels or MLP width.")
    ways: int = Field(DEFAULTS.ways, ge=2, le=100, description="Classes per task (classification).")
    shots: int = Field(DEFAULTS.shots, ge=1, le=100, description="Support examples per class or task.")
    queries: int = Field(DEFAULTS.queries, ge=1, le=100, description="Query examples per class or task.")
    meta_batch: int = Field(DEFAULTS.meta_batch, ge=1, le=1024, description="Tasks per meta-update.")
    iterations: int = Field(DEFAULTS.iterations, ge=1, le=1_000_000, description="Meta-updates.")
    inner_steps: int = Field(DEFAULTS.inner_steps, ge=1, le=100)
    inner_lr: float = Field(DEFAULTS.inner_lr, gt=0, le=10, allow_inf_nan=False)
    step_loss: Literal["last", "all"] = "last"
    outer_lr: float = Field(DEFAULTS.outer_lr, gt=0, le=1, allow_inf_nan=False)
    seed: int = Field(DEFAULTS.seed, ge=0, le=2**31 - 1)
    val_every: int = Field(DEFAULTS.val_every, ge=1, description="Validate every this many iterations.")
    val_tasks: int = Field(DEFAULTS.val_tasks, ge=1, le=2000, description="Meta-validation tasks.")
    checkpoint_every: int = Field(DEFAULTS.checkpoint_every, ge=1, description="Checkpoint interval.")
    world_size: int = Field(
        default=1, ge=1, le=64, description="Processes training it together (torchrun), each on a share."
    )

    @model_validator(mode="after")
    def _one_source(self) -> JobSpec:
        if (self.family is None) == (self.dataset_id is None):
            raise ValueError("give exactly one of family (generated tasks) and dataset_id (an upload)")
        if self.world_size > self.meta_batch:
            raise ValueError(f"world_size {self.world_size} exceeds meta_batch {self.meta_batch}: each rank "
                             "needs a task")  # fmt: skip
        return self

    def train_spec(self, family: str, data: Path | None) -> TrainSpec:
        """The training recipe, on ``family`` (the dataset's, for an upload) reading ``data``."""
        recipe = self.model_dump(exclude={"name", "family", "dataset_id", "world_size"})
        return TrainSpec(**{**recipe, "family": family, "data": None if data is None else str(data)})
