"""Predictions as JSON-ready values: regression targets, or for each query the most probable label and
the probability of every label; concurrent queries on one model run as one batch (``predict_many``)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from app.meta import Params
from app.meta.flat import Flat, flatten
from app.meta.stacked import predict_many
from app.serving.cache import CPU
from app.serving.errors import Conflict
from app.serving.examples import Label, query_tensor
from app.serving.registry import LoadedModel, Registry
from app.serving.sessions import SessionStore

__all__ = ["Answer", "Query", "answer_many", "predict"]

UNCHANGED = flatten({})
"""The changes of a query on an initialization as it is: none."""


@dataclass(frozen=True)
class Query:
    """Query inputs as the request gave them, for a session or else an initialization as it is; ``scope``
    is the API key whose sessions it may use (None: any)."""

    x: list[Any]
    session_id: str | None = None
    model: str | None = None
    scope: str | None = None


@dataclass(frozen=True)
class Answer:
    """The predictions for one query, and the initialization that made them."""

    model: LoadedModel
    session_id: str | None
    predictions: list[Any]


def answer_many(
    registry: Registry, store: SessionStore, queries: Sequence[Query]
) -> list[Answer | Exception]:
    """Each query's answer, or its error (``NotFound``, ``Conflict`` for an unreadable session, a
    ``ValueError`` naming the field). The sessions are read in one query; queries on one model, all on
    sessions or all on the initialization, run as one batched forward pass."""
    asked = [(q.session_id, q.scope) for q in queries if q.session_id is not None]
    sessions = iter(store.open_many([i for i, _ in asked], [scope for _, scope in asked]))
    results: list[Answer | Exception] = [ValueError("x: not predicted")] * len(queries)
    batches: dict[tuple[str, bool], list[tuple[int, Flat, Tensor, Sequence[Label] | None]]] = {}
    labels: Sequence[Label] | None
    models: dict[str, LoadedModel] = {}
    for i, query in enumerate(queries):
        try:
            if query.session_id is None:
                model, changed, labels = registry.get(query.model), UNCHANGED, None
            else:
                opened = next(sessions)
                if isinstance(opened, Exception):
                    raise opened
                model, changed, labels = opened.model, opened.changed, opened.record.label_map
            x = query_tensor(model, query.x, store.settings.max_query)
        except (LookupError, ValueError, Conflict) as error:
            results[i] = error
            continue
        models[model.ref] = model
        batches.setdefault((model.ref, query.session_id is not None), []).append((i, changed, x, labels))
    for (ref, _), members in batches.items():
        model = models[ref]
        sets, xs = [c for _, c, _, _ in members], [x for _, _, x, _ in members]
        outputs = predict_many(model.learner, model.params, sets, xs, store.settings.compile, CPU)
        for (i, _, _, labels), out in zip(members, outputs, strict=True):
            try:
                results[i] = Answer(model, queries[i].session_id, _answers(model, out, labels))
            except ValueError as error:
                results[i] = error
    return results


def predict(
    model: LoadedModel, params: Params, x: Tensor, label_map: Sequence[Label] | None = None
) -> list[Any]:
    """``model``'s net with ``params`` (a session's or the initialization's own) on the queries ``x``
    (see ``query_tensor``), answered as ``answer_many`` answers."""
    with torch.no_grad():
        return _answers(model, model.learner.predict(params, x.to(model.device)), label_map)


def _answers(model: LoadedModel, out: Tensor, label_map: Sequence[Label] | None) -> list[Any]:
    """Regression gives a float per query (a list of floats for several targets). Classification gives
    ``{"label": ..., "probabilities": {label: p}}`` per query, the softmax over the head's first
    ``len(label_map)`` classes, named by ``label_map``; without one, over all classes, named 0..ways-1.
    Non-finite outputs are refused (finite logits give finite probabilities)."""
    out = out.float().cpu()
    values: list[list[float]] = out.tolist()  # checked in Python: a few floats cost less than torch calls
    if not all(math.isfinite(v) for row in values for v in row):
        raise ValueError("x: the predictions are not finite; these inputs lie far outside what it knows")
    if model.kind == "regression":
        answers: list[Any] = [row[0] for row in values] if model.ways == 1 else values
    else:
        labels = list(range(model.ways)) if label_map is None else list(label_map)
        probabilities = out[:, : len(labels)].softmax(-1)
        answers = [
            {
                "label": labels[int(row.argmax())],
                "probabilities": dict(zip(labels, row.tolist(), strict=True)),
            }
            for row in probabilities
        ]
    return answers
