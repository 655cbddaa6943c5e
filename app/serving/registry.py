"""The initializations the service serves: read from the models directory, verified, recorded in the
database, loaded on the device and warmed up; addressed as ``name`` or ``name@version``."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import torch
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from app.checkpoint import CheckpointError, load_card, load_weights
from app.config import Settings
from app.db.tables import Initialization
from app.meta import InnerLoop, Learner, Params, adapt, build_net
from app.meta.functional import net_params
from app.meta.tasks.family import Kind
from app.serving.errors import NotFound
from app.training import build_learner

__all__ = ["LoadedModel", "Registry"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """One initialization ready to serve: its parameters on the device and what a request must match."""

    id: int
    """Its ``initializations`` row."""
    name: str
    version: int
    card: dict[str, Any]
    learner: Learner
    params: Params
    kind: Kind
    ways: int
    """Width of the head: classes for classification, targets for regression."""
    input_shape: tuple[int, ...]
    inner: InnerLoop
    """The card's inner-loop defaults: steps, lr, and which tensors adapt."""
    device: torch.device

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


@dataclass(frozen=True)
class _Checkpoint:
    """A finished, verified checkpoint on the device, before it has a database row."""

    directory: Path
    card: dict[str, Any]
    learner: Learner
    params: Params
    inner: InnerLoop

    @property
    def key(self) -> tuple[str, int]:
        return self.card["name"], self.card["version"]


class Registry:
    """The loaded initializations, by ``(name, version)``, and the default one."""

    def __init__(self, models: Mapping[tuple[str, int], LoadedModel], default: LoadedModel) -> None:
        self._models = dict(models)
        self.default = default

    @classmethod
    def open(
        cls, settings: Settings, session_factory: sessionmaker[Session], device: torch.device
    ) -> Registry:
        """Load every finished model under ``settings.models_dir`` onto ``device``, upsert one row per
        ``name@version``, mark ``settings.default_model`` as the default, and warm each model up.

        Unfinished or corrupt models are skipped with a warning; a missing default raises ``NotFound``.
        """
        found: dict[tuple[str, int], _Checkpoint] = {}
        for card_path in sorted(Path(settings.models_dir).glob("*/card.json")):
            try:
                checkpoint = _read(card_path.parent, device)
            except (ValueError, KeyError, TypeError) as error:
                logger.warning("skipping the model in %s: %s", card_path.parent, error)
                continue
            if checkpoint.key in found:
                logger.warning(
                    "skipping the model in %s: %s@%s is already loaded from %s",
                    checkpoint.directory,
                    *checkpoint.key,
                    found[checkpoint.key].directory,
                )
                continue
            found[checkpoint.key] = checkpoint
        default_key = _lookup(set(found), settings.default_model)
        with session_factory.begin() as db:
            db.execute(update(Initialization).where(Initialization.is_default).values(is_default=False))
            rows = {key: _upsert(db, c, key == default_key) for key, c in found.items()}
            db.flush()
            models = {key: _loaded(rows[key].id, c, device) for key, c in found.items()}
        for key, model in models.items():
            _warm_up(model)
            logger.info("serving %s from %s on %s", model.ref, found[key].directory, device)
        return cls(models, models[default_key])

    @property
    def models(self) -> tuple[LoadedModel, ...]:
        """Every loaded model, by name and then version."""
        return tuple(self._models[key] for key in sorted(self._models))

    def get(self, ref: str | None = None) -> LoadedModel:
        """The model ``name@version``; for a bare ``name`` the default version (the default model's, or
        the highest); for ``None`` the default model. Raises ``NotFound`` listing the loaded models."""
        if ref is None or ref == self.default.name:
            return self.default
        return self._models[_lookup(set(self._models), ref)]


def _lookup(keys: set[tuple[str, int]], ref: str) -> tuple[str, int]:
    """The key ``ref`` names among ``keys``: ``name@version`` exactly, a bare ``name`` its highest version."""
    name, at, version = ref.partition("@")
    if not at:
        versions = [v for n, v in keys if n == name]
        if versions:
            return name, max(versions)
    elif version.isdigit() and (name, int(version)) in keys:
        return name, int(version)
    loaded = ", ".join(f"{n}@{v}" for n, v in sorted(keys)) or "none"
    raise NotFound(f"no model {ref!r}; the loaded models are: {loaded}")


def _read(directory: Path, device: torch.device) -> _Checkpoint:
    """The checkpoint in ``directory`` if training finished and its weights match the card and the net."""
    card = load_card(directory)
    training = card["training"]
    if not training.get("complete"):
        spec = training.get("spec", {})
        raise CheckpointError(
            f"training is not complete (iteration {training.get('iteration')} of {spec.get('iterations')})"
        )
    if not isinstance(card["name"], str) or not isinstance(card["version"], int):
        raise CheckpointError(
            f"name must be a string and version an integer; got {card['name']!r} and {card['version']!r}"
        )
    kind = card["family"]["kind"]
    if kind not in get_args(Kind):
        raise CheckpointError(f"family kind must be one of {get_args(Kind)}; got {kind!r}")
    learner = build_learner(build_net(card["net"]), kind)
    inner = InnerLoop(card["inner"]["steps"], card["inner"]["lr"], card["inner"]["adapts"])
    params = load_weights(directory, card)
    expected = {k: tuple(v.shape) for k, v in learner.net.named_parameters()}
    got = {k: tuple(v.shape) for k, v in net_params(params).items()}
    if got != expected:
        raise CheckpointError(f"the weights do not fit the card's net: expected {expected}, got {got}")
    return _Checkpoint(directory, card, learner, {k: v.to(device) for k, v in params.items()}, inner)


def _upsert(db: Session, checkpoint: _Checkpoint, is_default: bool) -> Initialization:
    """The row of ``name@version``, created or brought up to date with the checkpoint on disk."""
    name, version = checkpoint.key
    query = select(Initialization).where(Initialization.name == name, Initialization.version == version)
    row = db.scalar(query)
    if row is None:
        row = Initialization(name=name, version=version)
        db.add(row)
    card = checkpoint.card
    row.algorithm, row.family, row.net = card["algorithm"], card["family"]["name"], card["net"]
    row.card, row.sha256, row.path = card, card["sha256"], str(checkpoint.directory)
    row.is_default = is_default
    return row


def _loaded(row_id: int, checkpoint: _Checkpoint, device: torch.device) -> LoadedModel:
    net = checkpoint.learner.net
    return LoadedModel(
        id=row_id,
        name=checkpoint.key[0],
        version=checkpoint.key[1],
        card=checkpoint.card,
        learner=checkpoint.learner,
        params=checkpoint.params,
        kind=checkpoint.card["family"]["kind"],
        ways=net.outputs,
        input_shape=net.input_shape,
        inner=checkpoint.inner,
        device=device,
    )


def _warm_up(model: LoadedModel) -> None:
    """One adaptation and one prediction on a tiny synthetic support set, so that the first request does
    not pay for the allocator's, the kernels' and autograd's first calls."""
    generator = torch.Generator().manual_seed(0)
    count = model.ways if model.kind == "classification" else 2
    x = torch.rand(count, *model.input_shape, generator=generator).to(model.device)
    y = torch.arange(count) if model.kind == "classification" else torch.zeros(count, model.ways)
    adapted = adapt(model.learner, model.params, x, y.to(model.device), model.inner)
    with torch.no_grad():
        model.learner.predict(adapted, x)
