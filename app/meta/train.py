"""The meta-training loop: sample a task batch, take the algorithm's meta-gradients, step the optimizer.

A run's whole state is its meta-parameters, the optimizer and the task sampler's generator; callers
checkpoint it from ``on_iteration`` and hand it back through ``resume`` to continue exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from app.meta.algorithms import Algorithm
from app.meta.batch import TaskBatch
from app.meta.functional import Learner, Params

__all__ = ["Progress", "meta_train"]


@dataclass(frozen=True)
class Progress:
    """The run after ``iteration`` updates: what progress reports, validation and checkpoints need."""

    iteration: int
    loss: float
    params: Params
    optimizer: torch.optim.Optimizer
    generator: torch.Generator


def meta_train(
    algorithm: Algorithm,
    learner: Learner,
    params: Params,
    sample: Callable[[torch.Generator], TaskBatch],
    iterations: int,
    outer_lr: float = 1e-3,
    seed: int = 0,
    on_iteration: Callable[[Progress], None] | None = None,
    resume: Callable[[torch.optim.Optimizer, torch.Generator], int] | None = None,
) -> Params:
    """Meta-train ``params`` (meta-parameters, see ``Algorithm.init``) up to ``iterations`` task batches.

    ``sample`` draws a batch from the generator seeded with ``seed``, so a run is reproducible.
    ``resume(optimizer, generator)`` restores a saved state into both and returns the iteration it was
    saved at (``params`` must then be the meta-parameters saved with it); training continues from there.
    """
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0; got {iterations}")
    meta = {k: v.detach().clone().requires_grad_() for k, v in params.items()}
    optimizer = algorithm.optimizer(list(meta.values()), outer_lr)
    generator = torch.Generator().manual_seed(seed)
    start = resume(optimizer, generator) if resume is not None else 0
    if not 0 <= start <= iterations:
        raise ValueError(f"cannot resume at iteration {start} of a run of {iterations}")
    device = next(iter(meta.values())).device
    for iteration in range(start + 1, iterations + 1):
        batch = sample(generator).to(device)
        grads, loss = algorithm.meta_gradients(learner, meta, batch)
        value = float(loss)
        if not math.isfinite(value):
            # Stop before a non-finite step poisons the meta-parameters; the last checkpoint stays good.
            raise FloatingPointError(
                f"meta-training diverged at iteration {iteration}: the query loss is {value}; "
                "lower the inner or outer learning rate"
            )
        for name, tensor in meta.items():
            tensor.grad = grads[name]
        optimizer.step()
        if on_iteration is not None:
            on_iteration(Progress(iteration, value, meta, optimizer, generator))
    return {k: v.detach() for k, v in meta.items()}
