"""Layers that take parameters with or without a leading task dimension.

The engine batches tasks natively rather than through ``torch.func.vmap``: a layer whose weight carries a
leading task dimension ``T`` maps inputs shaped ``[T, N, ...]`` task by task in one kernel (batched matmul,
grouped convolution). This is faster than vmap on small nets, and it keeps batch norm exact: torch's native
batch norm gives wrong second-order gradients under vmap (``shared/anchors/vmap_batchnorm_repro.py``).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["BatchNorm2d", "Conv2d", "ConvBlocks", "Flatten", "Linear", "MaxPool2d"]


class Linear(nn.Linear):
    """``nn.Linear`` that also takes a weight ``[T, out, in]`` and input ``[T, N, in]``."""

    def forward(self, x: Tensor) -> Tensor:
        if self.weight.dim() == 2:
            return F.linear(x, self.weight, self.bias)
        return torch.baddbmm(self.bias.unsqueeze(-2), x, self.weight.mT)


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` over images ``[N, C, H, W]`` or task batches ``[T, N, C, H, W]``.

    A task-batched weight ``[T, O, C, k, k]`` runs as one convolution with ``groups=T``; an unbatched
    weight on a task batch runs as one convolution over all ``T * N`` images.
    """

    def forward(self, x: Tensor) -> Tensor:
        return self.convolve(x, self.weight, self.bias)

    def convolve(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        """This layer's convolution with the given weight and bias in place of its own."""
        if x.dim() == 4:
            return self._conv_forward(x, weight, bias)
        tasks, n = x.shape[:2]
        if weight.dim() == 4:
            return self._conv_forward(x.flatten(0, 1), weight, bias).unflatten(0, (tasks, n))
        grouped = x.transpose(0, 1).reshape(n, -1, *x.shape[-2:])
        out = F.conv2d(
            grouped,
            weight.flatten(0, 1),
            None if bias is None else bias.flatten(),
            self.stride,
            self.padding,
            self.dilation,
            groups=tasks,
        )
        return out.view(n, tasks, -1, *out.shape[-2:]).transpose(0, 1)


class BatchNorm2d(nn.Module):
    """Batch norm with per-task batch statistics and no running statistics (the MAML reference policy).

    Each forward normalizes with the statistics of the images it is given: the support set while
    adapting, the query batch while predicting — the same in training, evaluation and serving. A single
    task uses torch's fused kernel, and so does a task batch ``[T, N, C, H, W]`` where ``_fuses_tasks``;
    elsewhere a task batch reduces over ``(N, H, W)`` per task with mean/var ops. Both give exact
    higher-order gradients (outside ``vmap``).
    """

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 4:
            return F.batch_norm(x, None, None, self.weight, self.bias, training=True, eps=self.eps)
        if _fuses_tasks(x):
            return self._fused(x)
        scale, shift = self.affine(*_image_moments(x), self.weight)
        # x * scale + shift: one pass over the activations where (x - mean) * scale + bias takes three.
        return torch.addcmul(shift, x, scale)

    def affine(self, image_mean: Tensor, image_var: Tensor, weight: Tensor) -> tuple[Tensor, Tensor]:
        """The per-task, per-channel ``scale`` and ``shift`` (a few values each) with which a task batch
        normalizes to ``x * scale + shift``, from its images' per-channel means and variances (shaped
        ``[T, N, C, 1, 1]``), its own weight replaced by ``weight``."""
        # The set's statistics from its images' (the law of total variance, every image weighing the same).
        mean = image_mean.mean(1, keepdim=True)
        var = (image_var + (image_mean - mean).square()).mean(1, keepdim=True)
        scale = _per_channel(weight) * torch.rsqrt(var + self.eps)
        return scale, _per_channel(self.bias) - mean * scale

    def _fused(self, x: Tensor) -> Tensor:
        """A task batch through torch's fused kernel, each task's channels as channels of their own."""
        tasks, n, channels = x.shape[:3]
        weight, bias = (p.reshape(-1) if p.dim() == 2 else p.repeat(tasks) for p in (self.weight, self.bias))
        by_image = x.transpose(0, 1).reshape(n, tasks * channels, *x.shape[3:])
        out = F.batch_norm(by_image, None, None, weight, bias, training=True, eps=self.eps)
        return out.view(n, tasks, channels, *x.shape[3:]).transpose(0, 1)


def _fuses_tasks(x: Tensor) -> bool:
    """Whether batch norm runs a task batch through torch's fused kernel, its tasks' channels side by side:
    on a CPU, where the mean/var ops took a third of 64 Conv4-MAML adaptations (2.3 s, against 1.6 s fused).
    A GPU keeps the mean/var ops until the fused kernel is measured there."""
    return x.device.type == "cpu"


def _image_moments(x: Tensor) -> tuple[Tensor, Tensor]:
    """Each image's per-channel mean and variance in a task batch ``x``, in one pass over its contiguous
    pixels: a GPU reduces a strided ``(N, H, W)`` slower."""
    var, mean = torch.var_mean(x, dim=(3, 4), correction=0, keepdim=True)
    return mean, var


def _center_images(x: Tensor) -> tuple[Tensor, Tensor]:
    """Each image's per-channel mean and variance in a task batch ``x``, subtracting each image's mean
    from its pixels in place: the squared sum of centered values keeps a two-pass variance's accuracy,
    where a sum of raw squares loses it for channels whose mean is large against their spread."""
    pixels = x.flatten(3)
    mean = pixels.mean(-1, keepdim=True)
    var = torch.linalg.vector_norm(pixels.sub_(mean), dim=-1, keepdim=True).square_().div_(pixels.shape[-1])
    return mean.unsqueeze(-1), var.unsqueeze(-1)


def _images_first(x: Tensor) -> bool:
    """Whether a task batch ``[T, N, ...]`` lies images first in memory (``[N, T, ...]`` contiguous), as a
    grouped convolution leaves it."""
    return not x.is_contiguous() and x.transpose(0, 1).is_contiguous()


def _per_channel(p: Tensor) -> Tensor:
    """View a per-channel parameter ``[C]`` or ``[T, C]`` so it broadcasts over ``[T, N, C, H, W]``."""
    return p.view(-1, 1, p.shape[-1], 1, 1) if p.dim() == 2 else p.view(1, 1, -1, 1, 1)


MAXIMA_MIN_VALUES = 1 << 17
"""The fewest values a CPU's max-pool with gradients takes by maxima: below, torch's kernel is faster than
their ten ops (one Conv4 set's 5 images of 64 channels at 14x14: 0.07-0.10 vs 0.14-0.23 ms)."""


class MaxPool2d(nn.MaxPool2d):
    """``nn.MaxPool2d`` that also takes task batches ``[T, N, C, H, W]``. On a CPU its plain 2x2 pool takes
    elementwise maxima of strided views, 1.7-13x faster than torch's NCHW kernel; with gradients, where the
    images hold at least ``MAXIMA_MIN_VALUES``."""

    def forward(self, x: Tensor) -> Tensor:
        halves_on_cpu = x.device.type == "cpu" and self._halves()
        if halves_on_cpu and not _grad_flows(x):
            return _halve(x)
        if x.dim() == 5:
            if _images_first(x):  # pooled in that layout it needs no copy
                return self(x.transpose(0, 1)).transpose(0, 1)
            return self(x.flatten(0, 1)).unflatten(0, x.shape[:2])
        if halves_on_cpu and x.numel() >= MAXIMA_MIN_VALUES:
            pooled, _ = _HalvingMaxPool.apply(x)
            return pooled
        return super().forward(x)

    def _halves(self) -> bool:
        """Whether this is the plain 2x2, stride-2 pool that ``_halve`` computes."""
        plain = self.padding in (0, (0, 0)) and self.dilation in (1, (1, 1))
        plain = plain and not (self.ceil_mode or self.return_indices)
        return plain and self.kernel_size in (2, (2, 2)) and self.stride in (2, (2, 2))


def _grad_flows(x: Tensor) -> bool:
    """Whether autograd records what is computed from ``x``."""
    return x.requires_grad and torch.is_grad_enabled()


def _halve(x: Tensor) -> Tensor:
    """A 2x2, stride-2 max-pool as two elementwise maxima of strided views: the same values, and on a CPU
    9-13x faster than torch's NCHW max-pool kernel (0.10 vs 1.3 ms over 10 Conv4 images of 28x28)."""
    h, w = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2
    rows = torch.maximum(x[..., 0:h:2, :w], x[..., 1:h:2, :w])
    return torch.maximum(rows[..., 0::2], rows[..., 1::2])


def _halve_with_indices(x: Tensor) -> tuple[Tensor, Tensor]:
    """``_halve`` of images ``[N, C, H, W]`` and where each maximum lies, as ``max_pool2d_with_indices``
    gives it: the flat index into ``H * W`` of the first of tied values in row-major order (the maxima of
    column pairs first, so that ties between rows keep the upper one). On a CPU 1.7-2.4x faster than that
    kernel over 64 sets of 5 Conv4 images at 28x28 and 14x14 ([5, 4096, ...]: 17-23 vs 41-47 ms)."""
    width = x.shape[-1]
    h, w = x.shape[-2] // 2 * 2, width // 2 * 2
    left, right = x[..., :h, 0:w:2], x[..., :h, 1:w:2]
    rightward = right > left
    columns = torch.maximum(left, right)
    top, bottom = columns[..., 0::2, :], columns[..., 1::2, :]
    down = bottom > top
    top_right, bottom_right = rightward[..., 0::2, :], rightward[..., 1::2, :]
    # The column the maximum came from, in the row it came from.
    right_column = top_right ^ (down & (top_right ^ bottom_right))
    corners = torch.arange(0, h * width, 2 * width, device=x.device).view(-1, 1)
    corners = corners + torch.arange(0, w, 2, device=x.device)
    indices = torch.add(corners, down, alpha=width).add_(right_column)
    return torch.maximum(top, bottom), indices


class _HalvingMaxPool(torch.autograd.Function):
    """The 2x2, stride-2 max-pool of images ``[N, C, H, W]`` by ``_halve_with_indices``, its backward torch's
    own ``max_pool2d_with_indices_backward``, so higher-order gradients are torch's max-pool's."""

    @staticmethod
    def forward(x: Tensor) -> tuple[Tensor, Tensor]:
        return _halve_with_indices(x)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Tensor], output: tuple[Tensor, Tensor]) -> None:
        ctx.mark_non_differentiable(output[1])
        ctx.save_for_backward(inputs[0], output[1])

    @staticmethod
    def backward(ctx: Any, grad: Tensor, _: Tensor) -> Tensor:
        x, indices = ctx.saved_tensors
        return torch.ops.aten.max_pool2d_with_indices_backward(
            grad, x, [2, 2], [2, 2], [0, 0], [1, 1], False, indices
        )


class ConvBlocks(nn.Sequential):
    """Blocks of [``Conv2d`` 3x3, ``BatchNorm2d``, ReLU, ``MaxPool2d`` 2] between the ``widths`` given,
    then a ``Flatten``: the layers of a plain ``nn.Sequential`` (the same parameter names), each block
    computed in an order that gives the same values and gradients on less work. The ReLU follows the pool,
    over a quarter of the activations (max-pool and ReLU commute); where ``_pools_first`` the pool comes
    before the normalization too (``_pooled_first``)."""

    def __init__(self, widths: Sequence[int]) -> None:
        pairs = itertools.pairwise(widths)
        blocks = [(Conv2d(i, o, 3, padding=1), BatchNorm2d(o), MaxPool2d(2)) for i, o in pairs]
        super().__init__(*(m for c, n, p in blocks for m in (c, n, nn.ReLU(), p)), Flatten())
        self.blocks = blocks

    def forward(self, x: Tensor) -> Tensor:
        block = _pooled_first if _pools_first(x) else _normalized_first
        for conv, norm, pool in self.blocks:
            x = block(conv, norm, pool, x)
        return self[-1](x)


def _normalized_first(conv: Conv2d, norm: BatchNorm2d, pool: MaxPool2d, x: Tensor) -> Tensor:
    """``relu(norm(conv(x)))`` max-pooled, computed as ``relu(pool(norm(conv(x))))``: the ReLU over a
    quarter of the activations, and its backward too (the same gradients: both pass a window's gradient
    to its maximum where that is positive, and none elsewhere)."""
    return pool(norm(conv(x))).relu()


def _pools_first(x: Tensor) -> bool:
    """Whether conv blocks max-pool before they normalize ``x``: a task batch with gradients off (the
    images need none, but the blocks' own tensors may). A single set keeps the plain blocks: four kernels
    where pooling first launches a dozen, and a set's time on a GPU is their launches (on a CPU the two
    ran ten glyphs in the same 2.4 ms)."""
    return x.dim() == 5 and not torch.is_grad_enabled()


def _pooled_first(conv: Conv2d, norm: BatchNorm2d, pool: MaxPool2d, x: Tensor) -> Tensor:
    """``relu(norm(conv(x)))`` max-pooled, computed as ``relu(pool(conv(x)) * scale + shift)``.

    Batch norm maps each channel by ``x * scale + shift``, which keeps the order of values where ``scale``
    is positive, so taking the maxima first gives the same maxima (in floating point too, where rounding
    keeps order). Channels whose weight is negative (and so their scale) have their filters negated first:
    that negates their outputs and their mean exactly, so the weight's absolute value gives them the same
    normalized values with a positive scale. The convolution's bias is left out: the mean cancels it (a
    pass over the activations on a GPU, 2.1 of 13.2 ms of 1,024 glyph predictions).
    """
    sign = 1 - 2 * (norm.weight < 0).to(norm.weight.dtype)
    y = conv.convolve(x, conv.weight * sign.view(*sign.shape, 1, 1, 1), None)
    centered = _centers_images(y)
    image_mean, image_var = (_center_images if centered else _image_moments)(y)
    scale, shift = norm.affine(image_mean, image_var, norm.weight.abs())
    if centered:  # y now holds each pixel's difference from its image's mean
        shift = shift + image_mean * scale
    return torch.addcmul(shift, pool(y), scale).relu_()


def _centers_images(y: Tensor) -> bool:
    """Whether pooled-first blocks take the images' statistics by centering them (``_center_images``) rather
    than in ``var_mean``'s one pass: on a CPU, where that pass takes ten times as long as centering's three
    (64 glyph sets' first layer, [64, 10, 64, 28, 28]: 95-99 vs 10 ms), and not on a GPU, where it is the
    one read of the activations that centering makes four."""
    return y.device.type == "cpu"


class Flatten(nn.Module):
    """Flattens the last ``dims`` dimensions (an image's ``C, H, W``), whatever leads them."""

    def __init__(self, dims: int = 3) -> None:
        super().__init__()
        self.dims = dims

    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(-self.dims)
