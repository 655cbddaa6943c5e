"""Uploaded datasets for meta-training: streamed to disk under a byte limit, checked by building their task
family exactly as training will, then moved whole into ``datasets/<id>/`` and described in ``datasets``."""

from __future__ import annotations

import builtins
import os
import re
import secrets
import shutil
import zipfile
from pathlib import Path
from typing import IO, Any

import torch
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.datasets.archive import check_size, unpack
from app.datasets.upload import copy_at_most, format_of
from app.db.tables import Dataset, Job, visible_to
from app.families.registry import build_family
from app.jobs.store import ACTIVE
from app.meta.tasks.pools import SPLITS
from app.serving import Conflict, NotFound

__all__ = ["CHECK_SEED", "DATASETS", "DatasetStore"]

DATASETS = "datasets"
"""The datasets' folder in the data directory."""
CHECK_SEED = 0
"""The seed of the meta-train/val/test split an upload is checked with."""
FAMILIES = {"npz": "arrays", "csv": "arrays", "zip": "folder"}
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class DatasetStore:
    """Datasets in ``<data_dir>/datasets/<id>/`` and rows in ``datasets``. A row's ``path`` (relative to
    the data directory) is what ``build_family(row.details["family"], seed, data=data_dir / row.path)``
    reads: an ``.npz`` or ``.csv`` file, or the folder of a zip's images."""

    def __init__(self, settings: Settings, session_factory: sessionmaker[Session]) -> None:
        self.settings = settings
        self.directory = Path(settings.data_dir) / DATASETS
        self.directory.mkdir(parents=True, exist_ok=True)
        self._db = session_factory

    def create(
        self, name: str, format: str | None, stream: IO[bytes], *, filename: str | None, ways: int,
        shots: int, queries: int, owner: str | None = None,
    ) -> Dataset:  # fmt: skip
        """Store what ``stream`` holds (``format``, else the suffix of ``filename``; see ``format_of``) as
        dataset ``name`` of ``owner`` (an API key's id) once its family builds and every split yields a
        ``ways``-way task of ``shots`` + ``queries`` examples a class. Nothing stays on disk or in the
        database when any step fails."""
        if not NAME.fullmatch(name):
            raise ValueError(
                f"name: 1 to 64 letters, digits, '.', '_' or '-', the first a letter or digit; got {name!r}"
            )
        format = format_of(format, filename)
        dataset_id = secrets.token_urlsafe(16)
        staging, final = self.directory / f".partial-{dataset_id}", self.directory / dataset_id
        staging.mkdir()
        try:
            data, size = self._unpacked(format, stream, staging, name)
            checked = _checked(FAMILIES[format], data, ways, shots, queries)
            path = f"{DATASETS}/{dataset_id}/{data.relative_to(staging)}"
            row = Dataset(
                id=dataset_id, name=name, format=format, path=path, size_bytes=size, owner=owner, **checked
            )
            staging.rename(final)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        try:
            with self._db.begin() as db:
                db.add(row)
        except BaseException:
            shutil.rmtree(final, ignore_errors=True)
            raise
        return row

    def get(self, dataset_id: str, scope: str | None = None) -> Dataset:
        """The row of ``dataset_id``; ``NotFound`` when there is none or ``scope`` (an owner; None: anyone)
        does not own it."""
        with self._db() as db:
            row = db.get(Dataset, dataset_id)
        if row is None or scope not in (None, row.owner):
            raise NotFound(f"no dataset {dataset_id!r}")
        return row

    def list(self, scope: str | None = None) -> builtins.list[Dataset]:
        """Every dataset of ``scope`` (an owner; None: all), newest first."""
        query = select(Dataset).where(visible_to(Dataset.owner, scope))
        with self._db() as db:
            return builtins.list(db.scalars(query.order_by(Dataset.created.desc(), Dataset.id)))

    def delete(self, dataset_id: str, scope: str | None = None) -> None:
        """Delete the row, then the files; refused with ``Conflict`` while a queued or running job reads it.
        Finished jobs let go of it (their ``dataset_id`` becomes null), so that the foreign key allows it.
        ``NotFound`` when ``scope`` (an owner; None: anyone) does not own it."""
        with self._db.begin() as db:
            # The row is locked (PostgreSQL) and a write comes first (it takes SQLite's write lock), so no job
            # can be queued for it between the count of active jobs below and the delete.
            row = db.get(Dataset, dataset_id, with_for_update=True)
            if row is None or scope not in (None, row.owner):
                raise NotFound(f"no dataset {dataset_id!r}")
            db.execute(
                update(Job)
                .where(Job.dataset_id == dataset_id, Job.state.not_in(ACTIVE))
                .values(dataset_id=None)
            )
            jobs = db.scalars(select(Job.id).where(Job.dataset_id == dataset_id)).all()
            if jobs:
                raise Conflict(
                    f"dataset {dataset_id!r} is read by {len(jobs)} queued or running job(s): "
                    f"{', '.join(jobs)}; cancel them or wait until they finish"
                )
            db.delete(row)
        shutil.rmtree(self.directory / dataset_id)

    def _unpacked(self, format: str, stream: IO[bytes], staging: Path, name: str) -> tuple[Path, int]:
        """Read the upload into ``staging``: a zip is checked and extracted into the folder ``name``, arrays
        become the file ``name.<format>``. Returns that path and the bytes stored."""
        limits = self.settings
        upload = staging / ".upload"
        size = copy_at_most(stream, upload, limits.max_upload_bytes)
        if format == "zip":
            size = unpack(upload, staging / name, limits.max_unpacked_bytes)
            upload.unlink()
            return staging / name, size
        data = upload.rename(staging / f"{name}.{format}")
        # numpy inflates an npz's arrays in memory: a bomb must be refused before it loads.
        if format == "npz" and zipfile.is_zipfile(data):
            with zipfile.ZipFile(data) as archive:
                check_size(archive, limits.max_unpacked_bytes)
        return data, size


def _checked(family_name: str, data: Path, ways: int, shots: int, queries: int) -> dict[str, Any]:
    """The row's kind, counts and details, once the family builds from ``data`` as training will build it
    and every split yields a task of ``ways``, ``shots`` and ``queries``. Failures name the field ``file``,
    with paths relative to the upload."""
    try:
        family = build_family(family_name, CHECK_SEED, data=data)
        generator = torch.Generator().manual_seed(CHECK_SEED)
        for split in SPLITS:
            family.sample(generator, split, 1, ways, shots, queries)
    except ValueError as error:
        raise ValueError(f"file: {str(error).replace(f'{data.parent}{os.sep}', '')}") from None
    described: dict[str, Any] = family.describe()
    classification = family.kind == "classification"
    return {
        "kind": family.kind,
        "examples": described["examples"],
        "classes": sum(described["classes"].values()) if classification else None,
        "details": {
            "family": family_name,
            "input_shape": list(family.input_shape),
            "checked": {"seed": CHECK_SEED, "ways": ways, "shots": shots, "queries": queries},
            **{key: value for key, value in described.items() if key not in ("name", "kind")},
        },
    }
