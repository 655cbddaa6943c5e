"""The functional core: parameters as dicts, a net used through ``functional_call``, one inner loop.

Training, evaluation, serving and the benchmarks all adapt through ``inner_steps``/``adapt``: K SGD steps
on a support set, for one task or a task batch (a leading task dimension on ``x`` and ``y``), with
second-order, first-order or no meta-gradient.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Literal, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from app.meta.batch import check_examples
from app.meta.nets import MetaNet, is_head

__all__ = [
    "LOSSES",
    "InnerLoop",
    "Learner",
    "MetaGrad",
    "Params",
    "adapt",
    "compiled_form",
    "final_params",
    "inner_steps",
    "lr_key",
    "net_params",
]

Params = dict[str, Tensor]
Result = TypeVar("Result")
MetaGrad = Literal["second", "first", "none"]
"""How the adapted parameters depend on the initialization: through the full inner-loop graph
(MAML), through the identity only (first-order MAML), or not at all (serving, evaluation, Reptile)."""

LR_PREFIX = "inner_lr/"


def lr_key(name: str, step: int | None = None) -> str:
    """Key of a learned inner learning rate: for every step (Meta-SGD) or for one step (MAML++)."""
    return f"{LR_PREFIX}{name}" if step is None else f"{LR_PREFIX}{step}/{name}"


def net_params(params: Params) -> Params:
    """The net's own tensors, without the learned learning rates stored beside them."""
    return {k: v for k, v in params.items() if not k.startswith(LR_PREFIX)}


def _mean(per_example: Tensor, mask: Tensor | None) -> Tensor:
    """Mean over the last (example) dimension, of the examples ``mask`` marks when one is given."""
    if mask is None:
        return per_example.mean(-1)
    return (per_example * mask).sum(-1) / mask.sum(-1)


def _mse(pred: Tensor, y: Tensor) -> Tensor:
    return (pred - y).square().mean(-1)


def _cross_entropy(logits: Tensor, y: Tensor) -> Tensor:
    return F.cross_entropy(logits.flatten(0, -2), y.flatten(), reduction="none").view(y.shape)


LOSSES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {"mse": _mse, "cross_entropy": _cross_entropy}
"""Per-example losses: predictions ``[..., N, out]`` and targets to a loss per example ``[..., N]``."""


@dataclass(frozen=True)
class Learner:
    """A net used functionally with its loss: what the inner loop differentiates.

    Every tensor comes from the parameters passed in (nets hold no buffers), so the net's own weights
    only give shapes and names: one learner serves parameters on any device, from any thread.
    """

    net: MetaNet
    loss: str = "mse"
    _lock: threading.RLock = field(default_factory=threading.RLock, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {sorted(LOSSES)}; got {self.loss!r}")

    def predict(self, params: Params, x: Tensor) -> Tensor:
        return self._call(self.net, net_params(params), x)

    def losses(self, params: Params, x: Tensor, y: Tensor, mask: Tensor | None = None) -> Tensor:
        """Mean loss of each task: a scalar for one task, ``[T]`` for a task batch; ``mask`` (1 for a real
        example, 0 for padding, shaped like ``y``'s example dimensions) averages over real examples only."""
        return _mean(LOSSES[self.loss](self.predict(params, x), y), mask)

    def features(self, params: Params, x: Tensor) -> Tensor:
        """The body's output, what the head sees: computed once when only the head adapts (ANIL)."""
        return self._call(self.net.body, _part(params, "body."), x)

    def head_losses(self, params: Params, features: Tensor, y: Tensor, mask: Tensor | None = None) -> Tensor:
        """``losses`` from the body's output onward."""
        logits = self._call(self.net.head, _part(params, "head."), features)
        return _mean(LOSSES[self.loss](logits, y), mask)

    def _call(self, module: nn.Module, params: Params, x: Tensor) -> Tensor:
        """``module`` with ``params`` on ``x``. ``functional_call`` swaps the module's tensors in place
        for the call, so concurrent threads take turns (the backward passes still run side by side)."""
        if torch.compiler.is_compiling():
            return functional_call(module, params, (x,), tie_weights=False)
        with self._lock:
            return functional_call(module, params, (x,), tie_weights=False)

    def check(self, x: Tensor, y: Tensor, what: str) -> int | None:
        """Validate examples for this net (see ``check_examples``); returns the number of tasks or None."""
        tasks = check_examples(x, y, self.net.input_shape, what)
        lead = x.dim() - len(self.net.input_shape)
        if self.loss == "cross_entropy":
            if y.dim() != lead or y.is_floating_point() or y.is_complex():
                raise TypeError(
                    f"{what} y must hold one integer class label per example; got {y.dtype} "
                    f"of shape {tuple(y.shape)}"
                )
            if y.numel() and (int(y.min()) < 0 or int(y.max()) >= self.net.outputs):
                raise ValueError(
                    f"{what} y labels must lie in [0, {self.net.outputs}); got {int(y.min())}..{int(y.max())}"
                )
        elif tuple(y.shape[lead:]) != (self.net.outputs,):
            raise ValueError(f"{what} y must have shape (N, {self.net.outputs}); got {tuple(y.shape)}")
        return tasks


@dataclass(frozen=True)
class InnerLoop:
    """The inner loop's settings: K SGD steps, their learning rate(s), which tensors adapt."""

    steps: int = 1
    lr: float | tuple[float, ...] = 0.01
    """One learning rate for every step, or one per step (MAML++)."""
    adapts: Literal["all", "head"] = "all"
    """Which tensors adapt: all of them (MAML), or the head only (ANIL)."""

    def __post_init__(self) -> None:
        if not isinstance(self.steps, int) or self.steps < 0:
            raise ValueError(f"inner steps must be an integer >= 0; got {self.steps!r}")
        lrs = self.lr if isinstance(self.lr, tuple) else (self.lr,)
        if isinstance(self.lr, tuple) and len(lrs) != self.steps:
            raise ValueError(f"give one inner lr per step: {self.steps} steps, {len(lrs)} learning rates")
        if not all(isinstance(lr, int | float) and 0 <= lr < float("inf") for lr in lrs):
            raise ValueError(f"inner lr must be finite and >= 0; got {self.lr!r}")
        if self.adapts not in ("all", "head"):
            raise ValueError(f"adapts must be 'all' or 'head'; got {self.adapts!r}")

    def adapted(self, name: str) -> bool:
        return self.adapts == "all" or is_head(name)

    def step_lr(self, params: Params, step: int, name: str) -> float | Tensor:
        """The learning rate of tensor ``name`` at ``step``: learned if ``params`` holds one."""
        learned = params.get(lr_key(name, step), params.get(lr_key(name)))
        if learned is not None:
            return learned
        return self.lr[step] if isinstance(self.lr, tuple) else self.lr


def _gradients(loss_of: Callable[[Params], Tensor], fast: Params, meta_grad: MetaGrad) -> Params:
    """Gradients of ``loss_of(fast)`` with respect to ``fast``.

    Eager code uses ``torch.autograd.grad`` (the least overhead per call); under ``torch.compile`` the
    same step uses ``torch.func.grad``, which dynamo traces into one graph instead of breaking on it.
    """
    if torch.compiler.is_compiling():
        return torch.func.grad(loss_of)(fast)
    if meta_grad == "none":
        fast = {k: p.detach().requires_grad_() for k, p in fast.items()}
    with torch.enable_grad():
        loss = loss_of(fast)
        grads = torch.autograd.grad(loss, tuple(fast.values()), create_graph=meta_grad == "second")
    return dict(zip(fast, grads, strict=True))


def inner_steps(
    learner: Learner,
    params: Params,
    x: Tensor,
    y: Tensor,
    inner: InnerLoop,
    meta_grad: MetaGrad = "second",
    mask: Tensor | None = None,
    features: Tensor | None = None,
) -> Iterator[Params]:
    """Run ``inner.steps`` SGD steps on the support set ``(x, y)``, yielding the parameters after each.

    ``x``/``y`` hold one task or a task batch; for a batch each adapted tensor gains a leading task
    dimension (an expanded view of the shared initialization until the first step). ``params`` may hold
    learned learning rates (``lr_key``), which the steps use and which never change here. Callers check
    the examples first (``Learner.check``); the loop itself stays free of host syncs so that it compiles.
    ``mask`` marks the real examples of a padded task batch (see ``Learner.losses``); ``features`` is the
    body's output on ``x`` when the caller already has it and only the head adapts.
    """
    tasks = x.shape[0] if x.dim() == len(learner.net.input_shape) + 2 else None
    weights = net_params(params)
    if meta_grad == "none":
        weights = {k: v.detach() for k, v in weights.items()}
    fast = {k: v for k, v in weights.items() if inner.adapted(k)}
    if tasks is not None:
        fast = {k: v.expand(tasks, *v.shape) for k, v in fast.items()}
    frozen = {k: v for k, v in weights.items() if k not in fast}
    # When only the head adapts (ANIL), the body's output on the support set is the same at every step.
    if features is None and fast and all(is_head(k) for k in fast):
        features = learner.features(frozen, x)

    def support_loss(adapted: Params) -> Tensor:
        if features is not None:
            return learner.head_losses(adapted, features, y, mask).sum()
        return learner.losses({**frozen, **adapted}, x, y, mask).sum()

    for step in range(inner.steps):
        grads = _gradients(support_loss, fast, meta_grad)
        fast = {k: v - _lr(inner.step_lr(params, step, k), meta_grad) * grads[k] for k, v in fast.items()}
        yield {**frozen, **fast}


def _part(params: Params, prefix: str) -> Params:
    """The tensors under ``prefix``, renamed relative to that submodule."""
    return {k.removeprefix(prefix): v for k, v in params.items() if k.startswith(prefix)}


def _lr(lr: float | Tensor, meta_grad: MetaGrad) -> float | Tensor:
    return lr.detach() if meta_grad == "none" and isinstance(lr, Tensor) else lr


def adapt(
    learner: Learner,
    params: Params,
    x: Tensor,
    y: Tensor,
    inner: InnerLoop,
    meta_grad: MetaGrad = "none",
    compiled: bool = False,
) -> Params:
    """Check the support set, then return the parameters after all inner steps.

    ``compiled=True`` runs the steps through ``torch.compile`` (no meta-gradient only): the first call
    per net and shape compiles, later ones skip Python and autograd overhead entirely.
    """
    learner.check(x, y, "support")
    if not compiled:
        return final_params(learner, params, x, y, inner, meta_grad)
    if meta_grad != "none":
        raise ValueError("compiled adaptation takes no meta-gradient: pass meta_grad='none'")
    return compiled_form(final_params)(learner, params, x, y, inner, meta_grad)


def final_params(
    learner: Learner,
    params: Params,
    x: Tensor,
    y: Tensor,
    inner: InnerLoop,
    meta_grad: MetaGrad = "none",
    mask: Tensor | None = None,
    features: Tensor | None = None,
) -> Params:
    """The parameters after all inner steps, for examples the caller has already checked."""
    adapted = net_params(params)
    for adapted in inner_steps(learner, params, x, y, inner, meta_grad, mask, features):  # noqa: B007
        pass
    return adapted


@functools.cache
def compiled_form(function: Callable[..., Result]) -> Callable[..., Result]:
    """``function`` through ``torch.compile``, made once per function; each new net or shape compiles on
    its first call, later calls skip Python and autograd overhead."""
    return torch.compile(function)
