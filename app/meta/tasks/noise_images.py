"""N-way K-shot tasks of random 1x28x28 images: Omniglot's shapes without its content, enough to test
and benchmark the engine (the real image families come with ``glyphs`` and ``folder``)."""

from __future__ import annotations

import torch

from app.meta.batch import TaskBatch

__all__ = ["noise_image_tasks"]


def noise_image_tasks(
    generator: torch.Generator, tasks: int, ways: int = 5, shots: int = 1, queries: int = 15, size: int = 28
) -> TaskBatch:
    """Each class of each task is a random prototype image; examples are noisy copies of it, so the
    tasks are learnable (labels are ``0..ways-1``, each repeated ``shots`` or ``queries`` times)."""
    if min(tasks, ways, shots, queries, size) < 1:
        raise ValueError(
            f"tasks, ways, shots, queries and size must be >= 1; got {tasks}, {ways}, {shots}, "
            f"{queries}, {size}"
        )
    prototypes = torch.randn(tasks, ways, 1, 1, size, size, generator=generator)

    def examples(per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
        noise = torch.randn(tasks, ways, per_class, 1, size, size, generator=generator)
        x = (prototypes + noise).flatten(1, 2)
        y = torch.arange(ways).repeat_interleave(per_class).expand(tasks, -1).contiguous()
        return x, y

    return TaskBatch(*examples(shots), *examples(queries))
