"""A task family: what training, validation and the meta-test draw task batches from, split by split."""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import torch

from app.meta.batch import TaskBatch
from app.meta.tasks.pools import SPLITS, Pool, classification_tasks, regression_tasks, split_groups
from app.meta.tasks.sinusoid import sinusoid_tasks

__all__ = [
    "Family",
    "Kind",
    "PoolFamily",
    "SinusoidFamily",
    "held_out_batches",
    "pool_family",
    "split_generator",
]

Kind = Literal["classification", "regression"]


def split_generator(seed: int, split: str) -> torch.Generator:
    """A generator of its own for each split, so validation and test tasks never depend on training's
    draws and a split's tasks are the same in every run with ``seed``."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}; got {split!r}")
    return torch.Generator().manual_seed(zlib.crc32(f"{seed}/{split}".encode()))


class Family(Protocol):
    """A named source of tasks with disjoint meta-train, meta-val and meta-test splits."""

    @property
    def name(self) -> str: ...

    @property
    def kind(self) -> Kind: ...

    @property
    def input_shape(self) -> tuple[int, ...]: ...

    def sample(
        self, generator: torch.Generator, split: str, tasks: int, ways: int, shots: int, queries: int
    ) -> TaskBatch: ...

    def describe(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class SinusoidFamily:
    """Finn et al. 2017 sinusoids; the splits differ by their generators (see ``split_generator``)."""

    name: str = "sinusoid"
    kind: Kind = "regression"
    input_shape: tuple[int, ...] = (1,)

    def sample(
        self, generator: torch.Generator, split: str, tasks: int, ways: int, shots: int, queries: int
    ) -> TaskBatch:
        return sinusoid_tasks(generator, tasks, shots, queries)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "protocol": "Finn et al. 2017: A~U[0.1,5], phase~U[0,pi]",
        }


@dataclass(frozen=True)
class PoolFamily:
    """Tasks drawn from a pool of labelled examples, one pool per split (classes never shared)."""

    name: str
    kind: Kind
    splits: dict[str, Pool]
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.splits["train"].x.shape[1:])

    def sample(
        self, generator: torch.Generator, split: str, tasks: int, ways: int, shots: int, queries: int
    ) -> TaskBatch:
        if split not in self.splits:
            raise ValueError(f"split must be one of {tuple(self.splits)}; got {split!r}")
        pool = self.splits[split]
        if self.kind == "regression":
            return regression_tasks(generator, pool, tasks, shots, queries)
        try:
            return classification_tasks(generator, pool, tasks, ways, shots, queries)
        except ValueError as error:
            raise ValueError(f"{self.name} meta-{split} split: {error}") from None

    def describe(self) -> dict[str, Any]:
        counts = {split: pool.classes for split, pool in self.splits.items()}
        unit = "tasks" if self.kind == "regression" else "classes"
        return {"name": self.name, "kind": self.kind, unit: counts, **self.details}


def pool_family(
    name: str, kind: Kind, pool: Pool, groups: list[str], seed: int, details: dict[str, Any] | None = None
) -> PoolFamily:
    """Split ``pool`` into meta-train/val/test a whole group at a time (see ``split_groups``)."""
    splits = split_groups(groups, seed)
    return PoolFamily(name, kind, {s: pool.subset(rows) for s, rows in splits.items()}, details or {})


def held_out_batches(
    family: Family, seed: int, split: str, tasks: int, ways: int, shots: int, queries: int, batch: int = 25
) -> list[TaskBatch]:
    """The same ``tasks`` tasks of ``split`` on every call (validation curves and meta-test figures are
    comparable across runs), in batches of at most ``batch`` tasks."""
    generator = split_generator(seed, split)
    sizes = [min(batch, tasks - start) for start in range(0, tasks, batch)]
    return [family.sample(generator, split, n, ways, shots, queries) for n in sizes]
