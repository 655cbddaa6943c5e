"""A batch of few-shot tasks: support and query sets stacked along a leading task dimension."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["TaskBatch", "check_examples"]


@dataclass(frozen=True)
class TaskBatch:
    """``support_x [T, N, *input]``, ``support_y [T, N, ...]``, and the same for the query set."""

    support_x: Tensor
    support_y: Tensor
    query_x: Tensor
    query_y: Tensor

    def __post_init__(self) -> None:
        tasks = {t.shape[0] if t.dim() else 0 for t in self.tensors()}
        if len(tasks) != 1 or 0 in tasks:
            shapes = [tuple(t.shape) for t in self.tensors()]
            raise ValueError(f"support and query tensors must share a non-empty task dimension; got {shapes}")

    def tensors(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return self.support_x, self.support_y, self.query_x, self.query_y

    @property
    def tasks(self) -> int:
        return self.support_x.shape[0]

    def task(self, index: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """One task's support x, support y, query x, query y, without the task dimension."""
        sx, sy, qx, qy = self.tensors()
        return sx[index], sy[index], qx[index], qy[index]

    def to(self, device: torch.device | str) -> TaskBatch:
        return TaskBatch(*(t.to(device) for t in self.tensors()))


def check_examples(x: Tensor, y: Tensor, input_shape: tuple[int, ...], what: str) -> int | None:
    """Check one set of examples (unbatched ``[N, *input]`` or task-batched ``[T, N, *input]``).

    Returns the number of tasks, or None when unbatched. Raises ``ValueError`` naming ``what`` (e.g.
    "support") and the reason: wrong input shape, mismatched sizes, no examples, non-finite values.
    """
    lead = x.dim() - len(input_shape)
    if lead not in (1, 2) or tuple(x.shape[lead:]) != input_shape:
        raise ValueError(
            f"{what} x must have shape (N, {', '.join(map(str, input_shape))}) or a leading task dimension "
            f"before it; got {tuple(x.shape)}"
        )
    if tuple(y.shape[:lead]) != tuple(x.shape[:lead]):
        raise ValueError(
            f"{what} y must have one target per example: x has {tuple(x.shape[:lead])} examples, "
            f"y has shape {tuple(y.shape)}"
        )
    if x.shape[lead - 1] == 0:
        raise ValueError(f"{what} set is empty: give at least one example")
    if not x.is_floating_point():
        raise TypeError(f"{what} x must be a floating-point tensor; got {x.dtype}")
    for name, t in (("x", x), ("y", y)):
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ValueError(f"{what} {name} holds non-finite values (nan or inf)")
    return x.shape[0] if lead == 2 else None
