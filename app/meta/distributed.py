"""Meta-training on several processes (torchrun): each rank takes its share of the task batch and the
ranks all-reduce their meta-gradients into the whole batch's mean, as DistributedDataParallel would."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from app.meta.batch import TaskBatch
from app.meta.functional import Params

__all__ = [
    "Ranks",
    "all_reduce_mean",
    "any_rank",
    "barrier",
    "broadcast_from_leader",
    "current_ranks",
    "init_from_env",
    "rank_device",
    "share",
]


@dataclass(frozen=True)
class Ranks:
    """This process's place in the run: ``rank`` of ``world_size``, ``local_rank`` on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0


def current_ranks() -> Ranks:
    """The ranks of the initialized process group, or rank 0 of 1 without one."""
    if not dist.is_initialized():
        return Ranks()
    return Ranks(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def init_from_env() -> Ranks:
    """Join the process group that torchrun's environment describes (once; later calls only look it up).

    gloo carries CPU tensors and, where CUDA is available, nccl carries CUDA tensors, each rank on the GPU
    of its ``LOCAL_RANK``. A process that torchrun did not start with ``WORLD_SIZE`` > 1 joins nothing.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        cuda = dist.is_nccl_available() and local_rank < torch.cuda.device_count()
        if cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group("cpu:gloo,cuda:nccl" if cuda else "gloo")
    return current_ranks()


def rank_device(device: torch.device, ranks: Ranks) -> torch.device:
    """Where this rank trains: its node-local GPU when several ranks train on CUDA, else ``device``."""
    if device.type != "cuda" or ranks.world_size == 1:
        return device
    if ranks.local_rank >= torch.cuda.device_count():
        raise ValueError(
            f"local rank {ranks.local_rank} has no GPU of its own: this machine has "
            f"{torch.cuda.device_count()}; start at most one process per GPU (--nproc-per-node)"
        )
    return torch.device("cuda", ranks.local_rank)


def share(batch: TaskBatch, ranks: Ranks) -> TaskBatch:
    """This rank's contiguous slice of the batch's tasks; the slices of all ranks differ by one at most."""
    if ranks.world_size == 1:
        return batch
    if batch.tasks < ranks.world_size:
        raise ValueError(
            f"a meta-batch of {batch.tasks} tasks cannot be shared by {ranks.world_size} ranks: "
            f"give every rank at least one task (meta_batch >= {ranks.world_size})"
        )
    start = ranks.rank * batch.tasks // ranks.world_size
    stop = (ranks.rank + 1) * batch.tasks // ranks.world_size
    return TaskBatch(*(t[start:stop] for t in batch.tensors()))


def broadcast_from_leader(params: Params) -> None:
    """Overwrite every rank's ``params`` with rank 0's in place, so that no rank starts apart."""
    if current_ranks().world_size == 1:
        return
    with torch.no_grad():
        buffer = torch.cat([p.flatten() for p in params.values()])
        dist.broadcast(buffer, src=0)
        for p, value in zip(params.values(), buffer.split([p.numel() for p in params.values()]), strict=True):
            p.copy_(value.view_as(p))


def all_reduce_mean(grads: Params, loss: Tensor, weight: float) -> tuple[Params, Tensor]:
    """The whole batch's mean meta-gradients and loss from each rank's mean over its share of the tasks.

    ``weight`` is that share's fraction of the batch, so unequal shares still give the exact mean. One
    all-reduce of a flat buffer carries every tensor (DDP's buckets); a lone process gets its own back.
    """
    if current_ranks().world_size == 1:
        return grads, loss
    buffer = torch.cat([*(g.flatten() for g in grads.values()), loss.reshape(1)]) * weight
    dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
    *values, mean_loss = buffer.split([*(g.numel() for g in grads.values()), 1])
    reduced = {k: v.view_as(g) for (k, g), v in zip(grads.items(), values, strict=True)}
    return reduced, mean_loss.reshape(())


def any_rank(flag: bool) -> bool:
    """Whether ``flag`` is true on any rank, so that all ranks take the same branch (e.g. stop together)."""
    if current_ranks().world_size == 1:
        return flag
    found = torch.tensor([int(flag)])
    dist.all_reduce(found, op=dist.ReduceOp.MAX)
    return bool(found.item())


def barrier() -> None:
    """Wait for every rank (e.g. until rank 0 has written the checkpoint the others read)."""
    if current_ranks().world_size > 1:
        dist.barrier()
