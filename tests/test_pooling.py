"""The CPU's 2x2 max-pool by elementwise maxima against torch's own kernel: values, indices, gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from app.meta.layers import MaxPool2d, _halve_with_indices


@pytest.mark.parametrize("shape", [(2, 3, 8, 8), (2, 3, 7, 5), (1, 1, 2, 2), (3, 4, 3, 3)])
def test_maxima_give_torchs_values_and_indices_ties_included(shape: tuple[int, ...]) -> None:
    """Rounded values tie often; torch's kernel points at the first of tied values in row-major order."""
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0)).mul(2).round()
    pooled, indices = _halve_with_indices(x)
    expected, expected_indices = torch.ops.aten.max_pool2d_with_indices(x, [2, 2], [2, 2])
    assert torch.equal(pooled, expected)
    assert torch.equal(indices, expected_indices)


@pytest.mark.parametrize("layout", ["images", "task batch", "task batch, images first"])
def test_pool_with_gradients_gives_torchs_gradients_to_second_order(
    layout: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("app.meta.layers.MAXIMA_MIN_VALUES", 0)  # these few values take the maxima too
    x = torch.randn(4, 3, 6, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    x.requires_grad_()
    pool = MaxPool2d(2)

    def ours(images: torch.Tensor) -> torch.Tensor:
        if layout == "images":
            return pool(images)
        if layout == "task batch":
            return pool(images.unflatten(0, (2, 2))).flatten(0, 1)
        return pool(images.unflatten(0, (2, 2)).transpose(0, 1)).transpose(0, 1).flatten(0, 1)

    weights = torch.randn(4, 3, 3, 3, dtype=torch.float64)
    assert "_HalvingMaxPoolBackward" in backward_steps(ours(x))  # not torch's kernel
    (grad,) = torch.autograd.grad((ours(x) * weights).sum(), x)
    (expected,) = torch.autograd.grad((F.max_pool2d(x, 2) * weights).sum(), x)
    assert torch.equal(grad, expected)
    assert torch.autograd.gradcheck(ours, (x,))
    assert torch.autograd.gradgradcheck(ours, (x,))


def backward_steps(out: torch.Tensor) -> set[str]:
    """The names of the steps in ``out``'s backward graph."""
    names, pending = set(), [out.grad_fn]
    while pending:
        step = pending.pop()
        if step is not None:
            names.add(step.name())
            pending.extend(following for following, _ in step.next_functions)
    return names
