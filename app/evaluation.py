"""The meta-test protocol for a saved initialization, beside two baselines on the very same tasks: the
same net adapted from a random initialization with the same inner steps, and (classification) pixel
nearest-neighbour. ``metaserve eval`` prints it; the figures go into the model card."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from app.checkpoint import load_card, load_weights
from app.families.registry import build_family
from app.meta import Estimate, InnerLoop, Learner, TaskBatch, build_net, evaluate
from app.meta.tasks.family import held_out_batches
from app.meta.tasks.pools import SPLITS
from app.training import build_learner

__all__ = ["Protocol", "card_protocol", "evaluate_model", "load_model", "nearest_neighbour", "record"]


@dataclass(frozen=True)
class Protocol:
    """Which meta-test tasks and how the initialization adapts to them (``ways`` is 1 for regression)."""

    ways: int
    shots: int
    steps: int
    lr: float
    tasks: int = 600
    queries: int = 15
    split: str = "test"

    def __post_init__(self) -> None:
        for name in ("ways", "shots", "tasks", "queries"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1; got {getattr(self, name)}")
        if self.steps < 0 or not self.lr >= 0:
            raise ValueError(f"steps and lr must be >= 0; got {self.steps} and {self.lr}")
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}; got {self.split!r}")

    @property
    def regression(self) -> bool:
        return self.ways == 1

    @property
    def key(self) -> str:
        """Where a card keeps the figures of this protocol, e.g. ``test/5-way/1-shot/5-step``."""
        ways = "" if self.regression else f"{self.ways}-way/"
        return f"{self.split}/{ways}{self.shots}-shot/{self.steps}-step"

    def describe(self) -> str:
        task = f"{self.shots}-shot regression" if self.regression else f"{self.ways}-way {self.shots}-shot"
        queries = "query points" if self.regression else "queries per class"
        steps = "step" if self.steps == 1 else "steps"
        return (
            f"{self.tasks} meta-{self.split} tasks, {task}, {self.queries} {queries}, "
            f"{self.steps} {steps} of lr {self.lr}"
        )


def card_protocol(
    card: Mapping[str, Any],
    shots: int | None = None,
    steps: int | None = None,
    lr: float | None = None,
    tasks: int = 600,
    ways: int | None = None,
    queries: int | None = None,
    split: str = "test",
) -> Protocol:
    """The protocol a model card implies (its trained ways and shots, inner steps and lr; 15 queries a
    class or 100 points a task), with any of them overridden."""
    classification = card["family"]["kind"] == "classification"
    return Protocol(
        ways=(card["training"]["spec"]["ways"] if classification else 1) if ways is None else ways,
        shots=card["training"]["spec"]["shots"] if shots is None else shots,
        steps=card["inner"]["steps"] if steps is None else steps,
        lr=card["inner"]["lr"] if lr is None else lr,
        tasks=tasks,
        queries=(15 if classification else 100) if queries is None else queries,
        split=split,
    )


def record(card: dict[str, Any], protocol: Protocol, results: Mapping[str, Mapping[str, Estimate]]) -> None:
    """Write ``evaluate_model``'s figures into ``card["metrics"]`` under the protocol's key."""
    card["metrics"][protocol.key] = {
        "protocol": asdict(protocol),
        **{method: {m: asdict(e) for m, e in metrics.items()} for method, metrics in results.items()},
    }


def load_model(directory: Path) -> tuple[dict[str, Any], Learner, dict[str, Tensor]]:
    """A saved initialization: its card, a learner for its net, and its verified weights."""
    card = load_card(directory)
    net = build_net(card["net"])
    kind = card["family"]["kind"]
    return card, build_learner(net, kind), load_weights(directory, card)


def nearest_neighbour(batch: TaskBatch) -> Tensor:
    """Per-task accuracy of labelling each query like its nearest support example in pixel space."""
    support, query = batch.support_x.flatten(2), batch.query_x.flatten(2)
    nearest = torch.cdist(query, support).argmin(-1)
    predicted = batch.support_y.gather(1, nearest)
    return (predicted == batch.query_y).float().mean(-1)


def evaluate_model(
    directory: Path, protocol: Protocol, cache_dir: Path = Path("data/cache")
) -> dict[str, dict[str, Estimate]]:
    """Figures of the initialization and its baselines, by method and then by metric."""
    card, learner, params = load_model(directory)
    spec = card["training"]["spec"]
    if card["family"]["kind"] == "classification" and protocol.ways != learner.net.outputs:
        raise ValueError(
            f"this model's head has {learner.net.outputs} ways; evaluate it at --ways {learner.net.outputs}"
        )
    data = Path(spec["data"]) if spec["data"] else None
    family = build_family(spec["family"], card["seed"], data, cache_dir)
    batches = held_out_batches(
        family, card["seed"], protocol.split, protocol.tasks, protocol.ways, protocol.shots, protocol.queries
    )
    inner = InnerLoop(protocol.steps, protocol.lr, card["inner"]["adapts"])
    torch.manual_seed(card["seed"] + 1)
    scratch = dict(build_net(card["net"]).named_parameters())
    results = {
        "metaserve": evaluate(learner, params, inner, batches),
        "random init": evaluate(learner, {k: v.detach() for k, v in scratch.items()}, inner, batches),
    }
    if family.kind == "classification":
        accuracy = torch.cat([nearest_neighbour(b) for b in batches])
        results["pixel nearest-neighbour"] = {"accuracy": Estimate.of(accuracy)}
    return results
