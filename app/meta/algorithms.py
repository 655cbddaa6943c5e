"""MAML and its family as small strategies over the one inner loop (``functional.inner_steps``).

Each algorithm turns a task batch into meta-gradients for its meta-parameters: the net's initialization
plus, for Meta-SGD and MAML++, learned inner learning rates stored beside it (``functional.lr_key``).
Whether the task batch runs at once (layers batch tasks natively) or task by task is chosen per net and
device by ``vectorizes``; callers never see it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import torch
from torch import Tensor, nn

from app.meta.batch import TaskBatch
from app.meta.functional import (
    InnerLoop,
    Learner,
    MetaGrad,
    Params,
    final_params,
    inner_steps,
    lr_key,
    net_params,
)

__all__ = ["ALGORITHMS", "MAML", "Algorithm", "Reptile", "build_algorithm", "vectorizes"]

Form = Literal["auto", "batched", "loop"]


def vectorizes(net: nn.Module, device: torch.device) -> bool:
    """Whether a task batch runs as one batched computation rather than task by task.

    On a GPU, always. On a CPU, only for nets without convolutions: there a conv net's task loop peaks at
    half the batch's memory and runs as fast or faster (Conv4, 32 tasks of 5 + 75 images: 2.2 against
    4.4 GB; second order even, first order 1.39x; bench/README.md).
    """
    return device.type != "cpu" or not any(isinstance(m, nn.Conv2d) for m in net.modules())


def over_tasks(
    learner: Learner,
    batch: TaskBatch,
    per_task: Callable[[Tensor, Tensor, Tensor, Tensor], Params],
    form: Form,
) -> Params:
    """Run ``per_task`` (support x, y, query x, y) -> named per-task values on the whole batch at once
    or task by task, as ``vectorizes`` (or ``form``) says; either way each value gains a task dimension."""
    batched = vectorizes(learner.net, batch.support_x.device) if form == "auto" else form == "batched"
    if batched:
        return per_task(*batch.tensors())
    results = [per_task(*batch.task(t)) for t in range(batch.tasks)]
    return {k: torch.stack([r[k] for r in results]) for k in results[0]}


def check_batch(learner: Learner, batch: TaskBatch) -> None:
    learner.check(batch.support_x, batch.support_y, "support")
    learner.check(batch.query_x, batch.query_y, "query")


class Algorithm(Protocol):
    """What training and evaluation need of an algorithm; ``MAML`` and ``Reptile`` provide it."""

    @property
    def inner(self) -> InnerLoop: ...

    def init(self, params: Params) -> Params: ...

    def optimizer(self, tensors: list[Tensor], outer_lr: float) -> torch.optim.Optimizer: ...

    def meta_gradients(
        self, learner: Learner, params: Params, batch: TaskBatch, form: Form = "auto"
    ) -> tuple[Params, Tensor]: ...


@dataclass(frozen=True)
class MAML:
    """Model-Agnostic Meta-Learning and the variants that differ only in their inner loop.

    - MAML: Finn, Abbeel, Levine, "Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks",
      ICML 2017 (second-order meta-gradient through the K inner steps).
    - First-order MAML (same paper, section 5.2): ``first_order=True`` treats the inner gradients as
      constants, so the meta-gradient is the query gradient at the adapted parameters.
    - ANIL: Raghu et al., "Rapid Learning or Feature Reuse?", ICLR 2020: ``InnerLoop(adapts="head")``.
    - Meta-SGD: Li et al., "Meta-SGD: Learning to Learn Quickly for Few-Shot Learning", 2017:
      ``learn_lr="per_parameter"`` meta-learns an inner learning rate for every weight.
    - MAML++: Antoniou et al., "How to train your MAML", ICLR 2019: ``learn_lr="per_step"`` (one learned
      rate per tensor and step) and ``step_loss_weights`` (the multi-step query loss).

    Example::

        learner = Learner(build_net({"name": "mlp"}), "mse")
        maml = MAML(InnerLoop(steps=1, lr=0.01))
        params = maml.init(dict(learner.net.named_parameters()))
        grads, loss = maml.meta_gradients(learner, params, sinusoid_tasks(gen, 25))
    """

    inner: InnerLoop = field(default_factory=InnerLoop)
    first_order: bool = False
    learn_lr: Literal["none", "per_parameter", "per_step"] = "none"
    step_loss_weights: tuple[float, ...] | None = None
    """Weight of the query loss after each inner step (MAML++); default: the last step only."""

    def __post_init__(self) -> None:
        if self.learn_lr not in ("none", "per_parameter", "per_step"):
            raise ValueError(f"learn_lr must be 'none', 'per_parameter' or 'per_step'; got {self.learn_lr!r}")
        if self.step_loss_weights is not None and len(self.step_loss_weights) != self.inner.steps:
            raise ValueError(
                f"give one step loss weight per inner step: {self.inner.steps} steps, "
                f"{len(self.step_loss_weights)} weights"
            )
        if self.inner.steps == 0:
            raise ValueError("MAML needs at least one inner step")
        if self.learn_lr == "per_step" and isinstance(self.inner.lr, tuple):
            raise ValueError("learned per-step rates start from one inner lr; give a single float")

    def init(self, params: Params) -> Params:
        """Meta-parameters: the net's tensors plus the learned inner learning rates, if any."""
        lrs: Params = {}
        for name, p in params.items():
            if not self.inner.adapted(name) or self.learn_lr == "none":
                continue
            if self.learn_lr == "per_parameter":
                lrs[lr_key(name)] = torch.full_like(p, float(self.inner.step_lr({}, 0, name)))
            else:
                for step in range(self.inner.steps):
                    lrs[lr_key(name, step)] = torch.tensor(float(self.inner.step_lr({}, step, name)))
        return {**params, **lrs}

    def optimizer(self, tensors: list[Tensor], outer_lr: float) -> torch.optim.Optimizer:
        """Adam on the meta-gradient, as in the MAML paper."""
        return torch.optim.Adam(tensors, lr=outer_lr)

    @property
    def meta_grad(self) -> MetaGrad:
        return "first" if self.first_order else "second"

    def meta_loss(self, learner: Learner, params: Params, batch: TaskBatch, form: Form = "auto") -> Tensor:
        """Mean over tasks of the (weighted) query loss after adapting on each task's support set."""
        check_batch(learner, batch)
        weights = self.step_loss_weights or (0.0,) * (self.inner.steps - 1) + (1.0,)

        def query_loss(sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor) -> Params:
            steps = inner_steps(learner, params, sx, sy, self.inner, self.meta_grad)
            losses = [w * learner.losses(p, qx, qy) for w, p in zip(weights, steps, strict=True) if w]
            return {"loss": torch.stack(losses).sum(0)}

        return over_tasks(learner, batch, query_loss, form)["loss"].mean()

    def meta_gradients(
        self, learner: Learner, params: Params, batch: TaskBatch, form: Form = "auto"
    ) -> tuple[Params, Tensor]:
        loss = self.meta_loss(learner, params, batch, form)
        wanted = [k for k, v in params.items() if v.requires_grad]
        grads = torch.autograd.grad(loss, [params[k] for k in wanted], allow_unused=True)
        found = {k: g for k, g in zip(wanted, grads, strict=True) if g is not None}
        return {k: found.get(k, torch.zeros_like(v)) for k, v in params.items()}, loss.detach()


@dataclass(frozen=True)
class Reptile:
    """Reptile: Nichol, Achiam, Schulman, "On First-Order Meta-Learning Algorithms", 2018.

    Adapts each task with plain SGD and moves the initialization toward the adapted weights. Batched:
    theta <- theta + epsilon * mean_i(phi_i - theta), as a meta-gradient ``theta - mean_i(phi_i)`` that an
    outer SGD step of size epsilon applies exactly. Serial (``serial=True``, the paper's Algorithm 1 over a
    batch): tasks in turn, theta <- theta + epsilon * (phi_i - theta), reported as the meta-gradient
    ``(theta_start - theta_end) / epsilon`` so the same outer SGD step lands on theta_end.
    """

    inner: InnerLoop = field(default_factory=lambda: InnerLoop(steps=5, lr=0.01))
    serial: bool = False
    epsilon: float = 0.1

    def __post_init__(self) -> None:
        if not 0 < self.epsilon <= 1:
            raise ValueError(f"reptile epsilon must lie in (0, 1]; got {self.epsilon!r}")

    def init(self, params: Params) -> Params:
        return dict(params)

    def optimizer(self, tensors: list[Tensor], outer_lr: float) -> torch.optim.Optimizer:
        """Plain SGD of step epsilon, which applies the Reptile update exactly (``outer_lr`` is unused)."""
        return torch.optim.SGD(tensors, lr=self.epsilon)

    def meta_gradients(
        self, learner: Learner, params: Params, batch: TaskBatch, form: Form = "auto"
    ) -> tuple[Params, Tensor]:
        check_batch(learner, batch)
        theta = {k: v.detach() for k, v in net_params(params).items()}
        with torch.no_grad():
            target, losses = (self._serial if self.serial else self._batched)(learner, theta, batch, form)
        grads = {k: (theta[k] - target[k]) / (self.epsilon if self.serial else 1.0) for k in target}
        return {**{k: torch.zeros_like(v) for k, v in params.items()}, **grads}, losses.mean()

    def _adapt(
        self, learner: Learner, theta: Params, sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor
    ) -> Params:
        """The adapted tensors of one task (or a task batch) and the query loss there."""
        phi = final_params(learner, theta, sx, sy, self.inner)
        return {
            "loss": learner.losses(phi, qx, qy),
            **{k: v for k, v in phi.items() if self.inner.adapted(k)},
        }

    def _batched(
        self, learner: Learner, theta: Params, batch: TaskBatch, form: Form
    ) -> tuple[Params, Tensor]:
        results = over_tasks(learner, batch, lambda *task: self._adapt(learner, theta, *task), form)
        losses = results.pop("loss")
        return {k: v.mean(0) for k, v in results.items()}, losses

    def _serial(self, learner: Learner, theta: Params, batch: TaskBatch, form: Form) -> tuple[Params, Tensor]:
        current, losses = dict(theta), []
        for t in range(batch.tasks):
            phi = self._adapt(learner, current, *batch.task(t))
            losses.append(phi.pop("loss"))
            current.update({k: v + self.epsilon * (phi[k] - v) for k, v in current.items() if k in phi})
        return {k: current[k] for k in phi}, torch.stack(losses)


ALGORITHMS: dict[str, Callable[..., Algorithm]] = {
    "maml": lambda inner, **kw: MAML(inner, **kw),
    "fomaml": lambda inner, **kw: MAML(inner, first_order=True, **kw),
    "anil": lambda inner, **kw: MAML(InnerLoop(inner.steps, inner.lr, "head"), **kw),
    "metasgd": lambda inner, **kw: MAML(inner, learn_lr="per_parameter", **kw),
    "reptile": lambda inner, **kw: Reptile(inner, **kw),
}


def build_algorithm(name: str, inner: InnerLoop, **options: Any) -> Algorithm:
    """The algorithm registered as ``name`` over ``inner``: ``build_algorithm("anil", InnerLoop(5, 0.4))``."""
    if name not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {sorted(ALGORITHMS)}; got {name!r}")
    try:
        return ALGORITHMS[name](inner, **options)
    except TypeError as error:
        raise ValueError(f"bad options for algorithm {name!r}: {error}") from error
