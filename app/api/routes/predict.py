"""POST /predict: a session's (or an un-adapted initialization's) predictions on query examples."""

from __future__ import annotations

from fastapi import APIRouter, Request

from app.api.deps import CallerDep, caller_gone
from app.api.errors import invalid_fields, problems
from app.api.lean import LeanRoute
from app.api.schemas import Classification, Prediction, PredictRequest
from app.serving.batcher import Batcher
from app.serving.predict import Answer, Query

__all__ = ["router"]

router = APIRouter(tags=["sessions"], route_class=LeanRoute)


@router.post("/predict", responses=problems(400, 404, 413, 503))
async def predict_queries(request: Request, body: PredictRequest, caller: CallerDep) -> Prediction:
    """Predict `x` with the session `session_id`, or with the initialization `model` as it is: numbers for
    a regressor, the label and every label's probability for a classifier."""
    # Concurrent calls on one model run as one batched forward pass, in a thread, like /adapt.
    predicting: Batcher[Query, Answer] = request.app.state.predicting
    with invalid_fields("body"):
        answer = await predicting.submit(
            Query(body.x, body.session_id, body.model, caller.scope), caller_gone(request)
        )
    predictions = answer.predictions
    if answer.model.kind == "classification":
        predictions = [
            Classification(label=a["label"], probabilities={str(k): p for k, p in a["probabilities"].items()})
            for a in predictions
        ]
    return Prediction(model=answer.model.ref, session_id=body.session_id, predictions=predictions)
