"""Meta-test protocol: adapt to held-out tasks, report the query loss (and accuracy) with a 95% interval."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor

from app.meta.algorithms import check_batch, over_tasks
from app.meta.batch import TaskBatch
from app.meta.functional import InnerLoop, Learner, Params, final_params

__all__ = ["Estimate", "evaluate"]


@dataclass(frozen=True)
class Estimate:
    """Mean over tasks with the half-width of its normal 95% confidence interval."""

    mean: float
    ci95: float
    tasks: int

    @staticmethod
    def of(values: Tensor) -> Estimate:
        n = values.numel()
        spread = float(values.std()) if n > 1 else 0.0
        return Estimate(float(values.mean()), 1.96 * spread / math.sqrt(n), n)


def evaluate(
    learner: Learner, params: Params, inner: InnerLoop, batches: Iterable[TaskBatch]
) -> dict[str, Estimate]:
    """Query loss, and accuracy for classification, after adapting each task with ``inner``."""

    def scores(sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor) -> dict[str, Tensor]:
        adapted = final_params(learner, params, sx, sy, inner)
        predictions = learner.predict(adapted, qx)
        found = {"loss": learner.losses(adapted, qx, qy)}
        if learner.loss == "cross_entropy":
            found["accuracy"] = (predictions.argmax(-1) == qy).float().mean(-1)
        return found

    per_task: dict[str, list[Tensor]] = {}
    with torch.no_grad():
        for batch in batches:
            check_batch(learner, batch)
            for name, values in over_tasks(learner, batch, scores, "auto").items():
                per_task.setdefault(name, []).append(values)
    return {name: Estimate.of(torch.cat(values)) for name, values in per_task.items()}
