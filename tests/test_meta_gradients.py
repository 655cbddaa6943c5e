"""MAML's meta-gradients against a plain autograd loop, for both task-batch forms."""

from __future__ import annotations

import pytest
import torch

from app.meta import MAML, InnerLoop, Learner, TaskBatch
from tests.conftest import as_dtype, leaf_params, reference_meta_gradient, relative_error


@pytest.mark.parametrize("form", ["batched", "loop"])
@pytest.mark.parametrize("steps", [1, 3])
def test_second_order_grad_matches_autograd_loop_mlp(
    sinusoid_learner: Learner, sinusoid_batch: TaskBatch, form: str, steps: int
) -> None:
    params = leaf_params(sinusoid_learner)
    grads, _ = MAML(InnerLoop(steps, 0.01)).meta_gradients(sinusoid_learner, params, sinusoid_batch, form)
    expected = reference_meta_gradient(
        sinusoid_learner, params, sinusoid_batch, steps, 0.01, first_order=False
    )
    assert relative_error(list(grads.values()), expected) < 1e-5


@pytest.mark.parametrize("form", ["batched", "loop"])
def test_second_order_grad_matches_autograd_loop_conv4_with_batch_norm(
    conv4_learner: Learner, image_batch: TaskBatch, form: str
) -> None:
    params = leaf_params(conv4_learner)
    grads, _ = MAML(InnerLoop(2, 0.4)).meta_gradients(conv4_learner, params, image_batch, form)
    expected = reference_meta_gradient(conv4_learner, params, image_batch, 2, 0.4, first_order=False)
    assert relative_error(list(grads.values()), expected) < 1e-5


@pytest.mark.parametrize("norm", ["fused", "mean/var ops"])
def test_batched_conv4_meta_gradient_is_exact_in_float64(
    conv4_learner: Learner, image_batch: TaskBatch, monkeypatch: pytest.MonkeyPatch, norm: str
) -> None:
    """The batched form's per-task batch norm, either way it runs (a CPU's fused kernel over the tasks'
    channels side by side, a GPU's mean/var ops), and a CPU's max-pool by maxima are exact where vmap +
    native batch norm is off by ~5e-3 (shared/anchors/vmap_batchnorm_repro.py): against the loop and
    against a central finite difference along a random direction, neither of which uses a task batch."""
    monkeypatch.setattr("app.meta.layers._fuses_tasks", lambda x: norm == "fused")
    monkeypatch.setattr("app.meta.layers.MAXIMA_MIN_VALUES", 0)  # every max-pool by maxima on a CPU
    batch = as_dtype(image_batch, torch.float64)
    params = leaf_params(conv4_learner, torch.float64)
    maml = MAML(InnerLoop(1, 0.4))
    grads, _ = maml.meta_gradients(conv4_learner, params, batch, "batched")
    expected = reference_meta_gradient(conv4_learner, params, batch, 1, 0.4, first_order=False)
    assert relative_error(list(grads.values()), expected) < 1e-10

    # ReLU and max-pool make the loss piecewise smooth (a kink lies ~1e-7 away here), so the step is tiny.
    direction = {k: torch.randn_like(v) for k, v in params.items()}
    eps = 1e-9

    def loss_at(scale: float) -> float:
        moved = {k: (v + scale * direction[k]).detach().requires_grad_() for k, v in params.items()}
        return float(maml.meta_loss(conv4_learner, moved, batch, "batched").detach())

    numeric = (loss_at(eps) - loss_at(-eps)) / (2 * eps)
    analytic = float(sum((grads[k] * direction[k]).sum() for k in params))
    assert abs(numeric - analytic) <= 1e-5 * abs(analytic)


def test_first_order_drops_exactly_the_second_order_terms(
    sinusoid_learner: Learner, sinusoid_batch: TaskBatch
) -> None:
    params = leaf_params(sinusoid_learner)
    first, _ = MAML(InnerLoop(2, 0.01), first_order=True).meta_gradients(
        sinusoid_learner, params, sinusoid_batch
    )
    second, _ = MAML(InnerLoop(2, 0.01)).meta_gradients(sinusoid_learner, params, sinusoid_batch)
    expected = reference_meta_gradient(sinusoid_learner, params, sinusoid_batch, 2, 0.01, first_order=True)
    assert relative_error(list(first.values()), expected) < 1e-6
    assert relative_error(list(first.values()), list(second.values())) > 1e-2


def test_first_order_conv4_matches_reference(conv4_learner: Learner, image_batch: TaskBatch) -> None:
    params = leaf_params(conv4_learner)
    grads, _ = MAML(InnerLoop(1, 0.4), first_order=True).meta_gradients(conv4_learner, params, image_batch)
    expected = reference_meta_gradient(conv4_learner, params, image_batch, 1, 0.4, first_order=True)
    assert relative_error(list(grads.values()), expected) < 1e-5
