"""Tasks drawn from a pool of labelled examples: N-way K-shot classification over a pool's classes, or
K-shot regression over its groups. Glyphs, folders of images and uploaded arrays all become a ``Pool``."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from app.meta.batch import TaskBatch

__all__ = ["SPLITS", "Pool", "classification_tasks", "pool_from_labels", "regression_tasks", "split_groups"]

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Pool:
    """Examples grouped by class (or, for regression, by task): class ``c`` owns rows
    ``offsets[c]:offsets[c + 1]`` of ``x`` (and of ``y``, the regression targets; None for classes)."""

    x: Tensor
    offsets: Tensor
    names: tuple[str, ...]
    y: Tensor | None = None

    def __post_init__(self) -> None:
        if self.offsets.dim() != 1 or len(self.names) != self.offsets.numel() - 1:
            raise ValueError(f"a pool needs one name per class: {len(self.names)} names, {self.offsets}")
        if len(self.names) == 0:
            raise ValueError("a pool needs at least one class")
        if int(self.offsets[-1]) != self.x.shape[0] or bool((self.offsets.diff() < 1).any()):
            raise ValueError("pool offsets must cover every row of x, each class holding at least one")
        if self.y is not None and self.y.shape[0] != self.x.shape[0]:
            raise ValueError(f"pool y has {self.y.shape[0]} rows for {self.x.shape[0]} examples")

    @property
    def classes(self) -> int:
        return len(self.names)

    @property
    def sizes(self) -> Tensor:
        """Examples per class."""
        return self.offsets.diff()

    def subset(self, classes: Sequence[int]) -> Pool:
        """The pool of the listed classes only, in that order."""
        rows = torch.cat([torch.arange(int(self.offsets[c]), int(self.offsets[c + 1])) for c in classes])
        sizes = self.sizes[list(classes)]
        offsets = torch.cat([torch.zeros(1, dtype=torch.long), sizes.cumsum(0)])
        y = None if self.y is None else self.y[rows]
        return Pool(self.x[rows], offsets, tuple(self.names[c] for c in classes), y)


def pool_from_labels(x: Tensor, labels: Sequence[Hashable], y: Tensor | None = None) -> Pool:
    """Group the rows of ``x`` by label (any hashable: strings, integers); classes sorted by name."""
    if len(labels) != x.shape[0]:
        raise ValueError(f"x has {x.shape[0]} rows but there are {len(labels)} labels")
    keys = np.array([str(label) for label in labels])
    names, inverse = np.unique(keys, return_inverse=True)
    order = torch.from_numpy(np.argsort(inverse, kind="stable"))
    counts = torch.from_numpy(np.bincount(inverse, minlength=len(names)))
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])
    return Pool(x[order], offsets, tuple(str(n) for n in names), None if y is None else y[order])


def _draw(generator: torch.Generator, pool: Pool, cls: int, count: int) -> Tensor:
    """Row indices of ``count`` distinct examples of class ``cls``."""
    start, size = int(pool.offsets[cls]), int(pool.sizes[cls])
    return torch.randperm(size, generator=generator)[:count] + start


def _check_counts(pool: Pool, tasks: int, shots: int, queries: int, unit: str) -> None:
    """Every count positive, and every class (or task) large enough for its support and query sets."""
    if min(tasks, shots, queries) < 1:
        raise ValueError(f"tasks, shots and queries must be >= 1; got {tasks}, {shots}, {queries}")
    smallest = int(pool.sizes.min())
    if shots + queries > smallest:
        raise ValueError(
            f"{shots} shots + {queries} queries need {shots + queries} {unit}; the smallest has {smallest}"
        )


def classification_tasks(
    generator: torch.Generator, pool: Pool, tasks: int, ways: int, shots: int, queries: int
) -> TaskBatch:
    """``tasks`` N-way K-shot tasks: ``ways`` distinct classes each, ``shots`` support and ``queries``
    query examples per class, labelled ``0..ways-1`` in a random order per task."""
    if ways < 2:
        raise ValueError(f"ways must be >= 2; got {ways}")
    if ways > pool.classes:
        raise ValueError(f"{ways}-way tasks need at least {ways} classes; this split has {pool.classes}")
    _check_counts(pool, tasks, shots, queries, "examples of every class")
    support, query = [], []
    for _ in range(tasks):
        chosen = torch.randperm(pool.classes, generator=generator)[:ways]
        rows = torch.stack([_draw(generator, pool, int(c), shots + queries) for c in chosen])
        support.append(rows[:, :shots].reshape(-1))
        query.append(rows[:, shots:].reshape(-1))
    labels = torch.arange(ways)
    sy = labels.repeat_interleave(shots).expand(tasks, -1).contiguous()
    qy = labels.repeat_interleave(queries).expand(tasks, -1).contiguous()
    return TaskBatch(pool.x[torch.stack(support)], sy, pool.x[torch.stack(query)], qy)


def regression_tasks(
    generator: torch.Generator, pool: Pool, tasks: int, shots: int, queries: int
) -> TaskBatch:
    """``tasks`` K-shot regression tasks, each one of the pool's groups (drawn with replacement) with
    ``shots`` support and ``queries`` query rows."""
    if pool.y is None:
        raise ValueError("regression tasks need a pool with targets y")
    _check_counts(pool, tasks, shots, queries, "rows in every task")
    chosen = torch.randint(pool.classes, (tasks,), generator=generator)
    rows = torch.stack([_draw(generator, pool, int(c), shots + queries) for c in chosen])
    x, y = pool.x[rows], pool.y[rows]
    return TaskBatch(x[:, :shots], y[:, :shots], x[:, shots:], y[:, shots:])


def split_groups(
    groups: Sequence[str], seed: int, fractions: tuple[float, float, float] = (0.7, 0.1, 0.2)
) -> dict[str, list[int]]:
    """Assign classes to the meta-train/val/test splits a whole group at a time (an alphabet, a font), so
    no group straddles two splits. Groups are shuffled by ``seed`` and dealt out until each split holds
    its fraction of the classes; with a single group per class this is a plain class split."""
    names = sorted(set(groups))
    if len(names) < 3:
        raise ValueError(f"three disjoint splits need at least 3 groups of classes; got {len(names)}")
    order = np.random.default_rng(seed).permutation(len(names))
    members: dict[str, list[int]] = {name: [] for name in names}
    for index, group in enumerate(groups):
        members[group].append(index)
    total, cut = len(groups), np.cumsum(fractions) / sum(fractions)
    splits: dict[str, list[int]] = {name: [] for name in SPLITS}
    dealt = 0
    for position, group_index in enumerate(order):
        remaining = len(order) - position
        # Every split keeps at least one group: the last groups go to whichever splits are still empty.
        empty = [s for s in SPLITS if not splits[s]]
        if len(empty) >= remaining:
            split = empty[0]
        else:
            split = SPLITS[int(np.searchsorted(cut, (dealt + 0.5) / total))]
        classes = members[names[group_index]]
        splits[split].extend(classes)
        dealt += len(classes)
    return {name: sorted(rows) for name, rows in splits.items()}
