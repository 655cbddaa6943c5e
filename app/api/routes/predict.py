"""POST /predict: a session's (or an un-adapted initialization's) predictions on query examples."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter

from app.api.deps import RegistryDep, SettingsDep, StoreDep
from app.api.errors import invalid_fields
from app.api.schemas import Classification, Prediction, PredictRequest
from app.serving import predict, query_tensor

__all__ = ["router"]

router = APIRouter(tags=["sessions"])


@router.post("/predict")
def predict_queries(
    body: PredictRequest, registry: RegistryDep, store: StoreDep, settings: SettingsDep
) -> Prediction:
    """Predict `x` with the session `session_id`, or with the initialization `model` as it is: numbers for
    a regressor, the label and every label's probability for a classifier."""
    # A plain function, run in FastAPI's threadpool like /adapt.
    if body.session_id is not None:
        record, params = store.get(body.session_id)
        model, labels = registry.get(record.model), record.label_map
    else:
        model = registry.get(body.model)
        params, labels = model.params, None
    with invalid_fields("body"):
        answers = predict(model, params, query_tensor(model, body.x, settings.max_query), labels)
        if not all(math.isfinite(value) for value in _numbers(answers)):
            raise ValueError("x: the predictions are not finite; these inputs lie far outside what it knows")
    if model.kind == "classification":
        answers = [
            Classification(label=a["label"], probabilities={str(k): p for k, p in a["probabilities"].items()})
            for a in answers
        ]
    return Prediction(model=model.ref, session_id=body.session_id, predictions=answers)


def _numbers(answer: Any) -> Iterator[float]:
    """Every number in the predictions: the values, or the probabilities of a classification."""
    if isinstance(answer, dict):
        yield from answer["probabilities"].values()
    elif isinstance(answer, list):
        for item in answer:
            yield from _numbers(item)
    else:
        yield answer
