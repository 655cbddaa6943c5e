"""Sinusoid regression, exactly Finn et al. 2017: y = A sin(x - phase), A ~ U[0.1, 5], phase ~ U[0, pi],
x ~ U[-5, 5], K support and K query points per task, mean squared error."""

from __future__ import annotations

import math

import torch

from app.meta.batch import TaskBatch

__all__ = ["sinusoid_tasks"]


def sinusoid_tasks(generator: torch.Generator, tasks: int, shots: int = 10, queries: int = 10) -> TaskBatch:
    """``tasks`` sinusoids, each with ``shots`` support and ``queries`` query points of shape ``[., 1]``."""
    if tasks < 1 or shots < 1 or queries < 1:
        raise ValueError(f"tasks, shots and queries must be >= 1; got {tasks}, {shots}, {queries}")
    amplitude = torch.empty(tasks, 1, 1).uniform_(0.1, 5.0, generator=generator)
    phase = torch.empty(tasks, 1, 1).uniform_(0.0, math.pi, generator=generator)
    x = torch.empty(tasks, shots + queries, 1).uniform_(-5.0, 5.0, generator=generator)
    y = amplitude * torch.sin(x - phase)
    return TaskBatch(x[:, :shots], y[:, :shots], x[:, shots:], y[:, shots:])
