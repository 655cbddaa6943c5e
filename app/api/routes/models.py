"""GET /models and GET /models/{name}: the loaded initializations, their cards and metrics; and POST
/models/{name}/promote, which picks the version a bare name gets."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, status

from app.api.deps import AdminDep, RegistryDep
from app.api.errors import problems
from app.api.schemas import Inner, ModelDetail, ModelSummary, ModelVersion, Promote
from app.serving import LoadedModel, Registry

__all__ = ["router"]

router = APIRouter(prefix="/models", tags=["models"], responses=problems(503))


def _summary(model: LoadedModel, registry: Registry) -> ModelSummary:
    return ModelSummary(
        name=model.name,
        version=model.version,
        ref=model.ref,
        default=registry.is_default(model),
        algorithm=model.card["algorithm"],
        family=model.card["family"]["name"],
        kind=model.kind,
        ways=model.ways,
        input_shape=list(model.input_shape),
        inner=Inner(steps=model.inner.steps, lr=model.inner.lr, adapts=model.inner.adapts),
    )


@router.get("")
async def list_models(registry: RegistryDep) -> list[ModelSummary]:
    """Every loaded initialization, by name and then version."""
    return [_summary(model, registry) for model in registry.models]


@router.get("/{name}", responses=problems(404))
async def get_model(name: str, registry: RegistryDep) -> ModelDetail:
    """Every loaded version of `name`, with its model card and the metrics recorded in it."""
    versions = [
        ModelVersion(**_summary(m, registry).model_dump(), card=m.card, metrics=m.card.get("metrics", {}))
        for m in registry.models
        if m.name == name
    ]
    if not versions:
        loaded = ", ".join(sorted({m.name for m in registry.models}))
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no model {name!r}; the loaded models are: {loaded}")
    return ModelDetail(name=name, versions=versions)


@router.post("/{name}/promote", responses=problems(400, 403, 404, 413))
def promote_model(name: str, body: Promote, registry: RegistryDep, _: AdminDep) -> ModelSummary:
    """Make `name@version` the version that requests naming bare `name` get, at once: requests in flight
    finish on the version they resolved, sessions keep the version they were adapted from. Admin keys
    only."""
    return _summary(registry.promote(name, body.version), registry)
