"""The initializations the service serves: read from the models directory, verified, recorded in the
database, loaded on the device and warmed up; addressed as ``name`` or ``name@version``."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from sqlalchemy import exc, select, update
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
    """The loaded initializations by ``(name, version)``, and each name's default version: the one a bare
    ``name`` gets. Published versions are loaded and promotions applied by ``sync`` while it serves;
    each change swaps a whole dict, so a request in flight keeps the model it resolved."""

    def __init__(
        self,
        session_factory: sessionmaker[Session],
        device: torch.device,
        models: Mapping[tuple[str, int], LoadedModel],
        default_name: str,
    ) -> None:
        self._db = session_factory
        self.device = device
        self._models = dict(models)
        self._defaults: dict[str, int] = {}
        self._refused: set[int] = set()
        """Rows whose checkpoint failed to load or verify: tried once, never served."""
        self.default_name = default_name
        """The model of requests that name none."""

    @classmethod
    def open(
        cls, settings: Settings, session_factory: sessionmaker[Session], device: torch.device
    ) -> Registry:
        """Load every finished model under ``settings.models_dir`` and every published version recorded in
        the database onto ``device``, upsert one row per shipped ``name@version``, and warm each model up.
        ``settings.default_model`` names the model of requests that name none (``name@version`` also
        makes that version its name's default); other names keep the default version recorded in the
        database, or get their highest.

        Unfinished or corrupt models are skipped with a warning; a missing default raises ``NotFound``.
        """
        found: dict[tuple[str, int], _Checkpoint] = {}
        for card_path in sorted(Path(settings.models_dir).glob("*/card.json")):
            checkpoint = _read_or_warn(card_path.parent, device)
            if checkpoint is None:
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
        try:
            ids = _upserted(session_factory, found)
        except exc.IntegrityError:  # a process starting beside this one inserted a row first: take it
            ids = _upserted(session_factory, found)
        models = {key: _loaded(ids[key], c, device) for key, c in found.items()}
        for key, model in models.items():
            _warm_up(model)
            logger.info("serving %s from %s on %s", model.ref, found[key].directory, device)
        registry = cls(session_factory, device, models, settings.default_model.partition("@")[0])
        registry.sync()
        name, version = _lookup(set(registry._models), settings.default_model, registry._defaults)
        if "@" in settings.default_model:
            registry.promote(name, version)
        return registry

    @property
    def models(self) -> tuple[LoadedModel, ...]:
        """Every loaded model, by name and then version."""
        return tuple(self._models[key] for key in sorted(self._models))

    @property
    def default(self) -> LoadedModel:
        """The model of requests that name none: ``default_name`` at its default version."""
        return self.get(self.default_name)

    def is_default(self, model: LoadedModel) -> bool:
        """Whether a bare ``model.name`` gets this version."""
        return self._defaults.get(model.name) == model.version

    def get(self, ref: str | None = None) -> LoadedModel:
        """The model ``name@version``; for a bare ``name`` its default version; for ``None`` the default
        model. Raises ``NotFound`` listing the loaded models."""
        key = _lookup(set(self._models), self.default_name if ref is None else ref, self._defaults)
        return self._models[key]

    def promote(self, name: str, version: int) -> LoadedModel:
        """Make ``name@version`` the default of ``name``, in the database and then here; a version published
        since the last ``sync`` (a job that just finished, perhaps in another process) is loaded first."""
        try:
            model = self.get(f"{name}@{version}")
        except NotFound:
            self.sync()
            model = self.get(f"{name}@{version}")
        with self._db.begin() as db:
            _mark_defaults(db, {name: version})
        self._defaults = {**self._defaults, name: version}
        return model

    def sync(self) -> list[LoadedModel]:
        """Load the versions the database records that are not loaded yet (published by jobs, perhaps by
        another process) and take up its default versions; returns the newly loaded models. A version
        that fails to load or verify is skipped with a warning, and what serves keeps serving."""
        with self._db() as db:
            rows = db.execute(select(Initialization.id, Initialization.path, Initialization.is_default)).all()
        known = {m.id for m in self._models.values()} | self._refused
        added: dict[tuple[str, int], LoadedModel] = {}
        for row_id, path, _ in rows:
            if row_id in known:
                continue
            checkpoint = _read_or_warn(Path(path), self.device)
            if checkpoint is None:
                self._refused.add(row_id)
                continue
            added[checkpoint.key] = _loaded(row_id, checkpoint, self.device)
            _warm_up(added[checkpoint.key])
            logger.info("serving %s from %s on %s", added[checkpoint.key].ref, path, self.device)
        models = {**self._models, **added}
        flagged = {row_id for row_id, _, is_default in rows if is_default}
        recorded = {m.name: m.version for m in models.values() if m.id in flagged}
        defaults = {name: recorded.get(name, max(v for n, v in models if n == name)) for name, _ in models}
        if defaults != recorded:
            with self._db.begin() as db:
                _mark_defaults(db, {n: v for n, v in defaults.items() if recorded.get(n) != v})
        self._models, self._defaults = models, defaults
        return list(added.values())


def _lookup(keys: set[tuple[str, int]], ref: str, defaults: Mapping[str, int]) -> tuple[str, int]:
    """The key ``ref`` names among ``keys``: ``name@version`` exactly, a bare ``name`` its default
    version (its highest when it has none)."""
    name, at, version = ref.partition("@")
    if not at:
        versions = [v for n, v in keys if n == name]
        if versions:
            return name, defaults.get(name, max(versions))
    elif version.isdigit() and (name, int(version)) in keys:
        return name, int(version)
    loaded = ", ".join(f"{n}@{v}" for n, v in sorted(keys)) or "none"
    raise NotFound(f"no model {ref!r}; the loaded models are: {loaded}")


def _mark_defaults(db: Session, defaults: Mapping[str, int]) -> None:
    """Record ``defaults`` (name to version) as the rows' default flags, all other versions of those
    names not default."""
    for name, version in defaults.items():
        db.execute(
            update(Initialization)
            .where(Initialization.name == name)
            .values(is_default=Initialization.version == version)
        )


def _read_or_warn(directory: Path, device: torch.device) -> _Checkpoint | None:
    """``_read``, or None with a warning naming the directory and what is wrong."""
    try:
        return _read(directory, device)
    except (ValueError, KeyError, TypeError, OSError) as error:
        logger.warning("skipping the model in %s: %s", directory, error)
        return None


def _read(directory: Path, device: torch.device) -> _Checkpoint:
    """The checkpoint in ``directory`` if training finished and its weights match the card and the net."""
    card = load_card(directory)
    training = card["training"]
    if not training.get("complete"):
        spec = training.get("spec", {})
        raise CheckpointError(
            f"training is not complete (iteration {training.get('iteration')} of {spec.get('iterations')})"
        )
    learner = build_learner(build_net(card["net"]), card["family"]["kind"])
    inner = InnerLoop(card["inner"]["steps"], card["inner"]["lr"], card["inner"]["adapts"])
    params = load_weights(directory, card)
    expected = {k: tuple(v.shape) for k, v in learner.net.named_parameters()}
    got = {k: tuple(v.shape) for k, v in net_params(params).items()}
    if got != expected:
        raise CheckpointError(f"the weights do not fit the card's net: expected {expected}, got {got}")
    return _Checkpoint(directory, card, learner, {k: v.to(device) for k, v in params.items()}, inner)


def _upserted(
    session_factory: sessionmaker[Session], found: Mapping[tuple[str, int], _Checkpoint]
) -> dict[tuple[str, int], int]:
    """The row ids of the checkpoints, upserted in one transaction."""
    with session_factory.begin() as db:
        rows = {key: _upsert(db, c) for key, c in found.items()}
        db.flush()
        return {key: row.id for key, row in rows.items()}


def _upsert(db: Session, checkpoint: _Checkpoint) -> Initialization:
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
