"""Predictions of a parameter set on query inputs as JSON-ready values: regression targets, or for each
query the most probable label and the probability of every label."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from app.meta import Params
from app.serving.examples import Label
from app.serving.registry import LoadedModel

__all__ = ["predict"]


def predict(
    model: LoadedModel, params: Params, x: Tensor, label_map: Sequence[Label] | None = None
) -> list[Any]:
    """``model``'s net with ``params`` (a session's or the initialization's own) on the queries ``x``
    (see ``query_tensor``).

    Regression gives a float per query (a list of floats for several targets). Classification gives
    ``{"label": ..., "probabilities": {label: p}}`` per query, the softmax over the head's first
    ``len(label_map)`` classes, named by ``label_map``; without one, over all classes, named 0..ways-1.
    """
    with torch.no_grad():
        out = model.learner.predict(params, x).float().cpu()
    if model.kind == "regression":
        return out.squeeze(-1).tolist() if model.ways == 1 else out.tolist()
    labels = list(range(model.ways)) if label_map is None else list(label_map)
    probabilities = out[:, : len(labels)].softmax(-1)
    return [
        {"label": labels[int(row.argmax())], "probabilities": dict(zip(labels, row.tolist(), strict=True))}
        for row in probabilities
    ]
