"""True float32 on CUDA, where cuDNN would otherwise round convolutions to TF32's 10 mantissa bits."""

from __future__ import annotations

import torch

__all__ = ["use_true_float32"]


def use_true_float32() -> None:
    """Turn TF32 off for convolutions and matrix products, process-wide. cuDNN picks its TF32 kernels by
    batch shape, so with TF32 a session's answer would move by 1e-4 with whoever shares its batch, and
    implementations compared in a benchmark would disagree by rounding, not by algorithm."""
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
