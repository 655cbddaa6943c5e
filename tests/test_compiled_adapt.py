"""Compiled adaptation (the METASERVE_COMPILE path) gives the eager inner loop's result, alone and batched."""

from __future__ import annotations

import torch

from app.meta import InnerLoop, Learner, TaskBatch, adapt
from app.meta.stacked import adapt_many
from tests.conftest import predict_each


def test_compiled_adaptation_matches_eager(sinusoid_learner: Learner, sinusoid_batch: TaskBatch) -> None:
    params = {k: v.detach() for k, v in sinusoid_learner.net.named_parameters()}
    inner = InnerLoop(5, 0.01)
    for t in range(2):
        x, y, _, _ = sinusoid_batch.task(t)
        eager = adapt(sinusoid_learner, params, x, y, inner)
        compiled = adapt(sinusoid_learner, params, x, y, inner, compiled=True)
        assert all(torch.allclose(eager[k], compiled[k], rtol=1e-5, atol=1e-6) for k in params)
        assert not any(v.requires_grad for v in eager.values())


def test_compiled_batches_match_eager(sinusoid_learner: Learner, sinusoid_batch: TaskBatch) -> None:
    """METASERVE_COMPILE's path: batched inner steps and forward passes through torch.compile."""
    params = {k: v.detach() for k, v in sinusoid_learner.net.named_parameters()}
    supports = [sinusoid_batch.task(t)[:2] for t in range(4)]
    supports[1] = (supports[1][0][:4], supports[1][1][:4])  # ragged: padded and masked
    inner = InnerLoop(3, 0.01)
    eager = adapt_many(sinusoid_learner, params, supports, inner)
    fast = adapt_many(sinusoid_learner, params, supports, inner, compile_steps=True)
    for e, f in zip(eager, fast, strict=True):
        assert torch.allclose(e.changed.tensor, f.changed.tensor, rtol=1e-5, atol=1e-6)
    sets, queries = [a.changed for a in eager], [sinusoid_batch.task(t)[2] for t in range(4)]
    for e, f in zip(
        predict_each(sinusoid_learner, params, sets, queries),
        predict_each(sinusoid_learner, params, sets, queries, compile_forward=True),
        strict=True,
    ):
        assert torch.allclose(e, f, rtol=1e-5, atol=1e-6)
