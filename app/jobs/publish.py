"""Publishing a finished job: evaluate it on held-out tasks, then write it as the next version of its name
under ``<data_dir>/models/<name>/<version>/`` with a card that records the job's spec, the figures and
its lineage, and record it in the database, where every service process's registry picks it up."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from sqlalchemy import exc, func, select
from sqlalchemy.orm import Session, sessionmaker

from app.checkpoint import WEIGHTS, load_card, save_card
from app.db.tables import Initialization, utc_now
from app.evaluation import card_protocol, evaluate_model, record

__all__ = ["PUBLISHED", "publish"]

PUBLISHED = "models"
"""The published versions' folder in the data directory."""
EVALUATION_TASKS = 200
VERSION_ATTEMPTS = 5


def publish(
    session_factory: sessionmaker[Session],
    data_dir: Path,
    checkpoint: Path,
    lineage: dict[str, Any],
    cache_dir: Path,
) -> int:
    """Publish the finished checkpoint as the next version of its card's name; returns the row id. The
    files are whole in their folder before the row that names them commits."""
    card = load_card(checkpoint)
    # As many queries as training used: an upload may hold no more examples of a class than that.
    protocol = card_protocol(card, tasks=EVALUATION_TASKS, queries=card["training"]["spec"]["queries"])
    record(card, protocol, evaluate_model(checkpoint, protocol, cache_dir))
    card["lineage"] = {**lineage, "published": utc_now().isoformat()}
    for _ in range(VERSION_ATTEMPTS):
        try:
            return _insert_version(session_factory, data_dir, checkpoint, card)
        except exc.IntegrityError:
            continue  # another job took this version of the name a moment ago: take the next one
    raise RuntimeError(f"could not find a free version of {card['name']!r} in {VERSION_ATTEMPTS} attempts")


def _insert_version(
    session_factory: sessionmaker[Session], data_dir: Path, checkpoint: Path, card: dict[str, Any]
) -> int:
    name = card["name"]
    with session_factory() as db:
        latest = db.scalar(select(func.max(Initialization.version)).where(Initialization.name == name))
        card = {**card, "version": (latest or 0) + 1}
        target = data_dir / PUBLISHED / name / str(card["version"])
        row = Initialization(
            name=name, version=card["version"], algorithm=card["algorithm"], family=card["family"]["name"],
            net=card["net"], card=card, sha256=card["sha256"], path=str(target.resolve()),
        )  # fmt: skip
        db.add(row)
        db.flush()  # the unique (name, version) constraint speaks here, before any file moves
        shutil.rmtree(target, ignore_errors=True)  # left by a crash before its row committed
        _write_folder(target, checkpoint, card)
        try:
            db.commit()
        except BaseException:
            shutil.rmtree(target, ignore_errors=True)
            raise
        return row.id


def _write_folder(target: Path, checkpoint: Path, card: dict[str, Any]) -> None:
    """Weights and card in a temporary folder beside ``target``, renamed into place whole."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        shutil.copyfile(checkpoint / WEIGHTS, staging / WEIGHTS)
        save_card(staging, card)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
