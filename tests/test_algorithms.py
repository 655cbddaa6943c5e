"""Reptile, ANIL, Meta-SGD and MAML++ options behave as their papers define them."""

from __future__ import annotations

import pytest
import torch

from app.meta import (
    ALGORITHMS,
    MAML,
    InnerLoop,
    Learner,
    Reptile,
    TaskBatch,
    adapt,
    build_algorithm,
    inner_steps,
)
from app.meta.functional import lr_key
from tests.conftest import as_dtype, leaf_params, meta_params, relative_error


def plain_sgd(
    learner: Learner, params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor, steps: int, lr: float
) -> dict[str, torch.Tensor]:
    """K steps of textbook SGD on one task with an optimizer, as the Reptile paper's pseudo-code."""
    weights = {k: v.detach().clone().requires_grad_() for k, v in params.items()}
    sgd = torch.optim.SGD(weights.values(), lr=lr)
    for _ in range(steps):
        sgd.zero_grad()
        learner.losses(weights, x, y).backward()
        sgd.step()
    return {k: v.detach() for k, v in weights.items()}


def outer_step(
    algorithm: Reptile, learner: Learner, params: dict[str, torch.Tensor], batch: TaskBatch, form: str
) -> dict[str, torch.Tensor]:
    grads, _ = algorithm.meta_gradients(learner, params, batch, form)  # type: ignore[arg-type]
    tensors = {k: v.detach().clone().requires_grad_() for k, v in params.items()}
    optimizer = algorithm.optimizer(list(tensors.values()), outer_lr=123.0)
    for k, v in tensors.items():
        v.grad = grads[k]
    optimizer.step()
    return {k: v.detach() for k, v in tensors.items()}


@pytest.mark.parametrize("form", ["batched", "loop"])
def test_batched_reptile_update_matches_formula(
    sinusoid_learner: Learner, sinusoid_batch: TaskBatch, form: str
) -> None:
    reptile = Reptile(InnerLoop(3, 0.02), epsilon=0.3)
    theta = leaf_params(sinusoid_learner)
    phis = [
        plain_sgd(sinusoid_learner, theta, sx, sy, 3, 0.02)
        for sx, sy, _, _ in (sinusoid_batch.task(t) for t in range(sinusoid_batch.tasks))
    ]
    expected = {k: v + 0.3 * torch.stack([phi[k] - v for phi in phis]).mean(0) for k, v in theta.items()}
    found = outer_step(reptile, sinusoid_learner, theta, sinusoid_batch, form)
    assert relative_error(list(found.values()), list(expected.values())) < 1e-6


def test_serial_reptile_update_matches_formula(sinusoid_learner: Learner, sinusoid_batch: TaskBatch) -> None:
    reptile = Reptile(InnerLoop(3, 0.02), serial=True, epsilon=0.3)
    theta = leaf_params(sinusoid_learner)
    expected = {k: v.detach() for k, v in theta.items()}
    for t in range(sinusoid_batch.tasks):
        sx, sy, _, _ = sinusoid_batch.task(t)
        phi = plain_sgd(sinusoid_learner, expected, sx, sy, 3, 0.02)
        expected = {k: v + 0.3 * (phi[k] - v) for k, v in expected.items()}
    found = outer_step(reptile, sinusoid_learner, theta, sinusoid_batch, "auto")
    assert relative_error(list(found.values()), list(expected.values())) < 1e-5


@pytest.mark.parametrize("tasks", [False, True])
def test_anil_leaves_the_body_untouched_in_the_inner_loop(
    conv4_learner: Learner, image_batch: TaskBatch, tasks: bool
) -> None:
    params = leaf_params(conv4_learner)
    x, y = (image_batch.support_x, image_batch.support_y) if tasks else image_batch.task(0)[:2]
    steps = list(inner_steps(conv4_learner, params, x, y, InnerLoop(2, 0.4, adapts="head")))
    for adapted in steps:
        assert all(adapted[k] is params[k] for k in params if not k.startswith("head."))
    assert all(
        not torch.equal(steps[-1][k].detach(), params[k].detach().expand_as(steps[-1][k]))
        for k in ("head.weight", "head.bias")
    )


def test_anil_meta_gradient_reaches_the_body_through_the_head(
    conv4_learner: Learner, image_batch: TaskBatch
) -> None:
    params = leaf_params(conv4_learner)
    grads, _ = build_algorithm("anil", InnerLoop(1, 0.4)).meta_gradients(conv4_learner, params, image_batch)
    assert float(grads["body.0.weight"].norm()) > 0


@pytest.mark.parametrize("form", ["batched", "loop"])
def test_anil_meta_gradient_matches_a_loop_that_recomputes_the_body_every_step(
    conv4_learner: Learner, image_batch: TaskBatch, form: str
) -> None:
    """ANIL computes the body's support features once; the result must equal the plain loop's."""
    params = leaf_params(conv4_learner, torch.float64)
    batch = as_dtype(image_batch, torch.float64)
    query_losses = []
    for t in range(batch.tasks):
        sx, sy, qx, qy = batch.task(t)
        head = {k: v for k, v in params.items() if k.startswith("head.")}
        for _ in range(3):
            loss = conv4_learner.losses({**params, **head}, sx, sy)
            grads = torch.autograd.grad(loss, list(head.values()), create_graph=True)
            head = {k: v - 0.4 * g for (k, v), g in zip(head.items(), grads, strict=True)}
        query_losses.append(conv4_learner.losses({**params, **head}, qx, qy))
    expected = torch.autograd.grad(torch.stack(query_losses).mean(), list(params.values()))
    anil = build_algorithm("anil", InnerLoop(3, 0.4))
    found, _ = anil.meta_gradients(conv4_learner, params, batch, form)
    assert relative_error([found[k] for k in params], list(expected)) < 1e-10


def test_meta_sgd_learning_rates_receive_gradients(
    sinusoid_learner: Learner, sinusoid_batch: TaskBatch
) -> None:
    metasgd = build_algorithm("metasgd", InnerLoop(1, 0.01))
    params = meta_params(metasgd, sinusoid_learner)
    rates = [k for k in params if k.startswith("inner_lr/")]
    assert sorted(rates) == sorted(lr_key(k) for k in sinusoid_learner.net.state_dict())
    assert all(torch.all(params[k] == 0.01) for k in rates)
    grads, _ = metasgd.meta_gradients(sinusoid_learner, params, sinusoid_batch)
    assert all(float(grads[k].abs().sum()) > 0 and bool(torch.isfinite(grads[k]).all()) for k in rates)


def test_meta_sgd_rates_scale_each_weights_step(sinusoid_learner: Learner, sinusoid_batch: TaskBatch) -> None:
    params = leaf_params(sinusoid_learner)
    rates = {lr_key(k): torch.full_like(v, 0.05) for k, v in params.items()}
    rates[lr_key("head.bias")] = torch.zeros(1)
    sx, sy, _, _ = sinusoid_batch.task(0)
    adapted = adapt(sinusoid_learner, {**params, **rates}, sx, sy, InnerLoop(1, 0.01))
    uniform = adapt(sinusoid_learner, params, sx, sy, InnerLoop(1, 0.05))
    assert torch.equal(adapted["head.bias"], params["head.bias"].detach())
    assert torch.allclose(adapted["head.weight"], uniform["head.weight"])


def test_maml_plus_plus_per_step_rates_and_multi_step_loss(
    sinusoid_learner: Learner, sinusoid_batch: TaskBatch
) -> None:
    maml = MAML(InnerLoop(3, 0.01), learn_lr="per_step", step_loss_weights=(0.2, 0.3, 0.5))
    params = meta_params(maml, sinusoid_learner)
    assert lr_key("head.weight", 2) in params and params[lr_key("head.weight", 2)].dim() == 0
    loss = maml.meta_loss(sinusoid_learner, params, sinusoid_batch)
    weights = dict(params)
    expected = torch.zeros(())
    for w, adapted in zip(
        (0.2, 0.3, 0.5),
        inner_steps(
            sinusoid_learner, weights, sinusoid_batch.support_x, sinusoid_batch.support_y, maml.inner
        ),
        strict=True,
    ):
        expected = expected + w * sinusoid_learner.losses(
            adapted, sinusoid_batch.query_x, sinusoid_batch.query_y
        )
    assert torch.allclose(loss, expected.mean(), rtol=1e-6)
    grads, _ = maml.meta_gradients(sinusoid_learner, params, sinusoid_batch)
    assert all(float(grads[lr_key("head.weight", s)].abs()) > 0 for s in range(3))


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_every_algorithm_gives_the_same_result_batched_and_task_by_task(
    name: str, conv4_learner: Learner, image_batch: TaskBatch
) -> None:
    algorithm = build_algorithm(name, InnerLoop(2, 0.1))
    params = meta_params(algorithm, conv4_learner)
    batched, batched_loss = algorithm.meta_gradients(conv4_learner, params, image_batch, "batched")
    looped, looped_loss = algorithm.meta_gradients(conv4_learner, params, image_batch, "loop")
    assert relative_error(list(batched.values()), list(looped.values())) < 1e-5
    assert torch.allclose(batched_loss, looped_loss, rtol=1e-5)
