"""Predictions as JSON-ready values: regression targets, or for each query the most probable label and
the probability of every label; concurrent queries on one model run as one batch (``predict_batches``)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from app.meta import Params
from app.meta.flat import Flat, flatten
from app.meta.stacked import predict_batches
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
        for batch in predict_batches(model.learner, model.params, sets, xs, store.settings.compile, CPU):
            chosen = [members[j] for j in batch.indices]
            sizes, label_maps = [x.shape[0] for _, _, x, _ in chosen], [labels for *_, labels in chosen]
            for (i, *_), answer in zip(chosen, _answers(model, batch.out, sizes, label_maps), strict=True):
                results[i] = (
                    answer if isinstance(answer, ValueError) else Answer(model, queries[i].session_id, answer)
                )
    return results


def predict(
    model: LoadedModel, params: Params, x: Tensor, label_map: Sequence[Label] | None = None
) -> list[Any]:
    """``model``'s net with ``params`` (a session's or the initialization's own) on the queries ``x``
    (see ``query_tensor``), answered as ``answer_many`` answers."""
    with torch.no_grad():
        out = model.learner.predict(params, x.to(model.device)).unsqueeze(0)
    (answer,) = _answers(model, out, [x.shape[0]], [label_map])
    if isinstance(answer, ValueError):
        raise answer
    return answer


def _answers(
    model: LoadedModel, out: Tensor, sizes: Sequence[int], label_maps: Sequence[Sequence[Label] | None]
) -> list[list[Any] | ValueError]:
    """Each set's answers from its row of a batch's outputs ``[sets, longest, outputs]``, the first
    ``sizes[r]`` of them: regression gives a float per query (a list of floats for several targets);
    classification gives ``{"label": ..., "probabilities": {label: p}}`` per query, the softmax over the
    head's first ``len(label_maps[r])`` classes, named by it (without one, over all classes, named
    0..ways-1). A set with non-finite outputs gets a ``ValueError`` instead (finite logits give finite
    probabilities). The batch is read into Python once, not set by set."""
    out = out.float().cpu()
    finite = torch.isfinite(out).all(-1).tolist()
    if model.kind == "regression":
        values = out.tolist()
    else:
        widths = [model.ways if labels is None else len(labels) for labels in label_maps]
        beyond = torch.arange(out.shape[-1]) >= torch.tensor(widths)[:, None, None]
        probabilities = out.masked_fill(beyond, -math.inf).softmax(-1)  # exp(-inf) is 0: a narrower softmax
        values, best = probabilities.tolist(), probabilities.argmax(-1).tolist()
    answers: list[list[Any] | ValueError] = []
    for r, (size, label_map) in enumerate(zip(sizes, label_maps, strict=True)):
        if not all(finite[r][:size]):
            answers.append(ValueError(_NOT_FINITE))
        elif model.kind == "regression":
            answers.append([row[0] for row in values[r][:size]] if model.ways == 1 else values[r][:size])
        else:
            labels = list(range(model.ways)) if label_map is None else list(label_map)
            answers.append(
                [
                    {"label": labels[k], "probabilities": dict(zip(labels, row, strict=False))}
                    for k, row in zip(best[r][:size], values[r][:size], strict=True)
                ]
            )
    return answers


_NOT_FINITE = "x: the predictions are not finite; these inputs lie far outside what it knows"
