"""The meta-training loop: sample a task batch, take the algorithm's meta-gradients, step the optimizer."""

from __future__ import annotations

from collections.abc import Callable

import torch

from app.meta.algorithms import Algorithm
from app.meta.batch import TaskBatch
from app.meta.functional import Learner, Params

__all__ = ["meta_train"]


def meta_train(
    algorithm: Algorithm,
    learner: Learner,
    params: Params,
    sample: Callable[[torch.Generator], TaskBatch],
    iterations: int,
    outer_lr: float = 1e-3,
    seed: int = 0,
    on_iteration: Callable[[int, float, Params], None] | None = None,
) -> Params:
    """Meta-train ``params`` (meta-parameters, see ``Algorithm.init``) for ``iterations`` task batches.

    ``sample`` draws a batch from the generator seeded with ``seed``, so a run is reproducible.
    ``on_iteration(i, loss, params)`` is called after each update (progress, validation, checkpoints).
    """
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0; got {iterations}")
    meta = {k: v.detach().clone().requires_grad_() for k, v in params.items()}
    optimizer = algorithm.optimizer(list(meta.values()), outer_lr)
    generator = torch.Generator().manual_seed(seed)
    device = next(iter(meta.values())).device
    for iteration in range(1, iterations + 1):
        batch = sample(generator).to(device)
        grads, loss = algorithm.meta_gradients(learner, meta, batch)
        for name, tensor in meta.items():
            tensor.grad = grads[name]
        optimizer.step()
        if on_iteration is not None:
            on_iteration(iteration, float(loss), meta)
    return {k: v.detach() for k, v in meta.items()}
