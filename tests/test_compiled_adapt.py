"""The compiled single-task adaptation (the fast /adapt path) gives the eager inner loop's result."""

from __future__ import annotations

import torch

from app.meta import InnerLoop, Learner, TaskBatch, adapt


def test_compiled_adaptation_matches_eager(sinusoid_learner: Learner, sinusoid_batch: TaskBatch) -> None:
    params = {k: v.detach() for k, v in sinusoid_learner.net.named_parameters()}
    inner = InnerLoop(5, 0.01)
    for t in range(2):
        x, y, _, _ = sinusoid_batch.task(t)
        eager = adapt(sinusoid_learner, params, x, y, inner)
        compiled = adapt(sinusoid_learner, params, x, y, inner, compiled=True)
        assert all(torch.allclose(eager[k], compiled[k], rtol=1e-5, atol=1e-6) for k in params)
        assert not any(v.requires_grad for v in eager.values())
