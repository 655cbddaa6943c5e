"""A training recipe end to end: the spec, the net and algorithm it names, periodic validation,
checkpoints with a model card, and resuming a run exactly. ``metaserve train`` and jobs call ``train``,
in one process or in each process that torchrun starts (rank 0 validates and writes, all ranks train)."""

from __future__ import annotations

import shlex
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from app.checkpoint import (
    CARD_NAME,
    CheckpointError,
    load_card,
    load_training_state,
    load_weights,
    recover_checkpoint,
    save_checkpoint,
)
from app.families.registry import build_family
from app.meta import Algorithm, InnerLoop, Learner, Params, build_algorithm, build_net, evaluate
from app.meta.distributed import barrier, init_from_env, rank_device
from app.meta.nets import MetaNet
from app.meta.tasks.family import Family, held_out_batches
from app.meta.train import Progress, meta_train

__all__ = ["TrainSpec", "Validation", "build_learner", "resolve_device", "train"]


@dataclass(frozen=True)
class TrainSpec:
    """Everything that determines a training run (with the seed, the run itself)."""

    family: str = "sinusoid"
    data: str | None = None
    algorithm: str = "maml"
    net: str = "auto"
    hidden: int = 64
    ways: int = 5
    shots: int = 10
    queries: int = 10
    meta_batch: int = 25
    iterations: int = 10_000
    inner_steps: int = 1
    inner_lr: float = 0.01
    step_loss: str = "last"
    """Query loss after the last inner step only, or averaged over "all" steps (MAML++'s multi-step loss)."""
    outer_lr: float = 1e-3
    seed: int = 0
    val_every: int = 500
    val_tasks: int = 200
    checkpoint_every: int = 500

    def command(self, out: Path) -> str:
        """The ``metaserve train`` command line that runs this spec into ``out`` (recorded in the card)."""
        options = []
        for name, value in asdict(self).items():
            if value is not None:
                flag = "--algo" if name == "algorithm" else "--" + name.replace("_", "-")
                options += [flag, str(value)]
        return shlex.join(["metaserve", "train", *options, "--out", str(out)])

    def __post_init__(self) -> None:
        for name in ("hidden", "ways", "shots", "queries", "meta_batch", "val_every", "val_tasks"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1; got {getattr(self, name)}")
        if self.step_loss not in ("last", "all"):
            raise ValueError(f"step_loss must be 'last' or 'all'; got {self.step_loss!r}")
        if self.checkpoint_every < 1 or self.iterations < 0:
            raise ValueError("checkpoint_every must be >= 1 and iterations >= 0")


@dataclass(frozen=True)
class Validation:
    """Figures on the meta-validation split after ``iteration`` updates."""

    iteration: int
    loss: float
    accuracy: float | None


def resolve_device(device: str) -> torch.device:
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda; got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda was asked for but CUDA is not available here")
    return torch.device(
        "cuda" if device == "auto" and torch.cuda.is_available() else device.replace("auto", "cpu")
    )


def net_config(spec: TrainSpec, family: Family) -> dict[str, Any]:
    """The net a spec names: Finn's 1-40-40-1 MLP for sinusoids, Conv4 for images, else an MLP."""
    shape = family.input_shape
    outputs = spec.ways if family.kind == "classification" else 1
    net = spec.net if spec.net != "auto" else ("conv4" if len(shape) == 3 else "mlp")
    if net == "conv4":
        if len(shape) != 3 or shape[1] != shape[2]:
            raise ValueError(f"conv4 needs square images (channels, size, size); this family gives {shape}")
        return {
            "name": "conv4",
            "ways": outputs,
            "channels": shape[0],
            "hidden": spec.hidden,
            "size": shape[1],
        }
    width = 40 if spec.family == "sinusoid" and spec.net == "auto" else spec.hidden
    features = int(torch.tensor(shape).prod())
    if len(shape) != 1:
        raise ValueError(f"an mlp takes flat inputs; this family gives inputs of shape {shape} (use conv4)")
    return {"name": "mlp", "sizes": [features, width, width, outputs]}


def build_learner(net: MetaNet, kind: str) -> Learner:
    return Learner(net, "cross_entropy" if kind == "classification" else "mse")


def build_spec_algorithm(spec: TrainSpec) -> Algorithm:
    inner = InnerLoop(spec.inner_steps, spec.inner_lr)
    options: dict[str, Any] = {"epsilon": spec.outer_lr} if spec.algorithm == "reptile" else {}
    if spec.step_loss == "all":
        if spec.algorithm == "reptile":
            raise ValueError("reptile has no query loss: step_loss 'all' applies to the MAML family only")
        options["step_loss_weights"] = (1 / spec.inner_steps,) * spec.inner_steps
    return build_algorithm(spec.algorithm, inner, **options)


def train(
    spec: TrainSpec,
    out: Path,
    name: str,
    resume: bool = False,
    device: str = "auto",
    cache_dir: Path = Path("data/cache"),
    on_progress: Callable[[Progress, Validation | None], None] | None = None,
    stop: threading.Event | None = None,
) -> dict[str, Any]:
    """Train per ``spec`` into ``out`` (weights, card, training state); returns the final card. Once
    ``stop`` is set (on any rank), the leader checkpoints after the iteration it is in and every rank raises
    ``Stopped``. ``on_progress`` sees each iteration, with its validation point if any, before the
    iteration's checkpoint is written, so that a run resumed from a checkpoint has reported all before it.

    With ``resume`` the run continues from the training state in ``out`` (same spec, or more iterations)
    and ends exactly where the uninterrupted run would. Under torchrun every rank calls it with the same
    arguments and ``out`` on storage they all see: they resume from the same checkpoint and train together,
    and only rank 0 validates, writes and calls ``on_progress``."""
    if not CARD_NAME.fullmatch(name):
        # Checked now, not when the card written at the end is read back.
        raise ValueError(f"name: letters, digits, '.', '_' or '-', the first a letter or digit; got {name!r}")
    ranks = init_from_env()
    leader = ranks.rank == 0
    where = rank_device(resolve_device(device), ranks)
    family = build_family(spec.family, spec.seed, Path(spec.data) if spec.data else None, cache_dir)
    torch.manual_seed(spec.seed)
    net = build_net(net_config(spec, family))
    learner = build_learner(net, family.kind)
    algorithm = build_spec_algorithm(spec)
    params = {k: v.to(where) for k, v in algorithm.init(dict(net.named_parameters())).items()}
    history: list[dict[str, Any]] = []
    restore, earlier_seconds = None, 0.0
    if resume:
        if leader:
            recover_checkpoint(out)
        barrier()  # the other ranks read the checkpoint once rank 0 has made it whole
        card = load_card(out)
        saved = TrainSpec(**card["training"]["spec"])
        if replace(saved, iterations=spec.iterations) != spec:
            raise CheckpointError(
                f"{out}: --resume needs the spec it was started with; it holds {asdict(saved)}"
            )
        saved_params = load_weights(out, card)
        if saved_params.keys() != params.keys():
            raise CheckpointError(f"{out}: the saved weights do not fit the net this spec builds")
        # The optimizer's state is by position: keep the order the algorithm gave its meta-parameters.
        params = {k: saved_params[k].to(where) for k in params}
        history, earlier_seconds = list(card["training"]["history"]), card["training"]["seconds"]
        restore = lambda optimizer, generator: load_training_state(out, optimizer, generator)  # noqa: E731
    held_out = held_out_batches(family, spec.seed, "val", spec.val_tasks, spec.ways, spec.shots, spec.queries)
    val = [b.to(where) for b in held_out]
    started = time.monotonic()

    def card_for(progress: Progress) -> dict[str, Any]:
        return {
            "name": name,
            "version": 1,
            "algorithm": spec.algorithm,
            "net": net.config,
            "family": {**family.describe(), "seed": spec.seed, "data": spec.data},
            "inner": {"steps": spec.inner_steps, "lr": spec.inner_lr, "adapts": algorithm.inner.adapts},
            "command": spec.command(out),
            "seed": spec.seed,
            "training": {
                "spec": asdict(spec),
                "iteration": progress.iteration,
                "complete": progress.iteration == spec.iterations,
                "seconds": round(earlier_seconds + time.monotonic() - started, 1),
                "device": str(where),
                "world_size": ranks.world_size,
                "torch": torch.__version__,
                "history": history,
            },
            "metrics": {},
            "sha256": "",
        }

    def checkpoint(progress: Progress) -> None:
        card = card_for(progress)
        save_checkpoint(
            out, card, progress.params, progress.iteration, progress.optimizer, progress.generator
        )

    def validate(iteration: int, meta: Params, train_loss: float | None) -> Validation:
        figures = evaluate(learner, {k: v.detach() for k, v in meta.items()}, algorithm.inner, val)
        accuracy = figures["accuracy"].mean if "accuracy" in figures else None
        history.append(
            {
                "iteration": iteration,
                "train_loss": None if train_loss is None else round(train_loss, 5),
                "val_loss": round(figures["loss"].mean, 5),
                **({"val_accuracy": round(accuracy, 5)} if accuracy is not None else {}),
            }
        )
        return Validation(iteration, figures["loss"].mean, accuracy)

    def on_iteration(progress: Progress) -> None:
        validation = None
        last = progress.iteration == spec.iterations
        if progress.iteration % spec.val_every == 0 or last:
            validation = validate(progress.iteration, progress.params, progress.loss)
        # Reported before the checkpoint: a run killed between the two resumes from the checkpoint before
        # and reports the point again, where the other order lost a job's validation point for good.
        if on_progress is not None:
            on_progress(progress, validation)
        if progress.iteration % spec.checkpoint_every == 0 or last or progress.stopping:
            checkpoint(progress)

    if not resume and leader:
        validate(0, params, None)  # where the curve starts: the untrained initialization
    meta_train(
        algorithm,
        learner,
        params,
        lambda g: family.sample(g, "train", spec.meta_batch, spec.ways, spec.shots, spec.queries),
        spec.iterations,
        spec.outer_lr,
        spec.seed,
        on_iteration if leader else None,
        restore,
        None if stop is None else stop.is_set,
    )
    barrier()  # the other ranks read the card only once rank 0 has written it
    return load_card(out)
