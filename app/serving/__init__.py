"""The serving core, which the HTTP routes call and which knows nothing of HTTP: initializations loaded on
the device, request data as tensors, adapted sessions and their predictions."""

from app.serving.errors import Conflict, NotFound
from app.serving.examples import query_tensor, support_tensors
from app.serving.predict import predict
from app.serving.registry import LoadedModel, Registry
from app.serving.sessions import SessionRecord, SessionStore

__all__ = [
    "Conflict",
    "LoadedModel",
    "NotFound",
    "Registry",
    "SessionRecord",
    "SessionStore",
    "predict",
    "query_tensor",
    "support_tensors",
]
