"""``bench/task_convs.py`` compares two forms of one computation: its unfolded matmul must give the
task-grouped convolution's output, forward and backward, or its timings compare different work."""

from __future__ import annotations

import pytest
import torch

from app.meta.layers import Conv2d
from bench.task_convs import unfolded


@pytest.mark.parametrize(("channels", "size"), [(1, 6), (3, 5)])
def test_unfolded_convolution_equals_the_grouped_one_with_gradients(channels: int, size: int) -> None:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, channels, size, size, generator=generator, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(3, 5, channels, 3, 3, generator=generator, dtype=torch.float64, requires_grad=True)
    conv = Conv2d(channels, 5, 3, padding=1, bias=False).double()
    grouped, mine = conv.convolve(x, weight, None), unfolded(x, weight)
    assert mine.shape == grouped.shape == (3, 4, 5, size, size)
    torch.testing.assert_close(mine, grouped)
    grad = torch.randn(grouped.shape, generator=generator, dtype=torch.float64)
    expected = torch.autograd.grad(grouped, (x, weight), grad)
    torch.testing.assert_close(torch.autograd.grad(mine, (x, weight), grad), expected)
