"""The meta-training loop: sample a task batch, take the algorithm's meta-gradients, step the optimizer.

A run's whole state is its meta-parameters, the optimizer and the task sampler's generator; callers
checkpoint it from ``on_iteration`` and hand it back through ``resume`` to continue exactly. Under torchrun
the ranks share each batch and step identically (``distributed.py``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from app.meta.algorithms import Algorithm, Reptile
from app.meta.batch import TaskBatch
from app.meta.distributed import all_reduce_mean, any_rank, broadcast_from_leader, current_ranks, share
from app.meta.functional import Learner, Params

__all__ = ["Progress", "Stopped", "meta_train"]


@dataclass(frozen=True)
class Progress:
    """The run after ``iteration`` updates: what progress reports, validation and checkpoints need;
    ``stopping`` when the run ends here early, as asked, so this is the iteration to checkpoint."""

    iteration: int
    loss: float
    params: Params
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    stopping: bool = False


class Stopped(Exception):  # noqa: N818 (a request honoured, not a failure)
    """Training stopped as asked after ``iteration``, which ``on_iteration`` saw as ``stopping``."""

    def __init__(self, iteration: int) -> None:
        super().__init__(f"stopped at iteration {iteration}, checkpointed")
        self.iteration = iteration


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
    stop: Callable[[], bool] | None = None,
) -> Params:
    """Meta-train ``params`` (meta-parameters, see ``Algorithm.init``) up to ``iterations`` task batches.

    ``sample`` draws a batch from the generator seeded with ``seed``, so a run is reproducible.
    ``resume(optimizer, generator)`` restores a saved state into both and returns the iteration it was
    saved at (``params`` must then be the meta-parameters saved with it); training continues from there.
    In a process group every rank draws the same batch, computes its share, and all ranks step on the
    whole batch's mean: the run equals the one-process run and leaves every rank with the same parameters.
    Once ``stop()`` is true on any rank, every rank ends after the same iteration: ``on_iteration`` sees it
    as ``stopping``, then ``Stopped`` is raised.
    """
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0; got {iterations}")
    ranks = current_ranks()
    if ranks.world_size > 1 and isinstance(algorithm, Reptile) and algorithm.serial:
        raise ValueError("serial Reptile adapts tasks in turn, so ranks cannot share a batch: use batched")
    meta = {k: v.detach().clone().requires_grad_() for k, v in params.items()}
    broadcast_from_leader(meta)
    optimizer = algorithm.optimizer(list(meta.values()), outer_lr)
    generator = torch.Generator().manual_seed(seed)
    start = resume(optimizer, generator) if resume is not None else 0
    if not 0 <= start <= iterations:
        raise ValueError(f"cannot resume at iteration {start} of a run of {iterations}")
    device = next(iter(meta.values())).device
    for iteration in range(start + 1, iterations + 1):
        batch = sample(generator)
        mine = share(batch, ranks)
        grads, loss = algorithm.meta_gradients(learner, meta, mine.to(device))
        grads, loss = all_reduce_mean(grads, loss, mine.tasks / batch.tasks)
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
        stopping = stop is not None and iteration < iterations and any_rank(stop())
        if on_iteration is not None:
            on_iteration(Progress(iteration, value, meta, optimizer, generator, stopping))
        if stopping:
            raise Stopped(iteration)
    return {k: v.detach() for k, v in meta.items()}
