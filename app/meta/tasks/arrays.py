"""A task family from a user's arrays: an ``.npz`` (keys ``x``, ``y``, optional ``task``) or a CSV with a
header row, as N-way classification over its labels or K-shot regression over its tasks."""

from __future__ import annotations

import csv
import zipfile
from pathlib import Path

import numpy as np
import torch

from app.meta.tasks.family import Kind, PoolFamily, pool_family
from app.meta.tasks.pools import Pool, pool_from_labels

__all__ = ["arrays_family"]

TASK = "task"
KINDS = ("classification", "regression")

# x, the labels or targets, and the task of each row (None when the file has no task field).
Columns = tuple[np.ndarray, np.ndarray, np.ndarray | None]


def arrays_family(path: Path, seed: int, kind: Kind | None = None, label: str = "y") -> PoolFamily:
    """Load ``path`` (``.npz`` or ``.csv``) and split its classes, or for regression its tasks, into
    meta-train/val/test by ``seed``. ``label`` names the npz key or CSV column of the labels or targets;
    ``kind=None`` infers regression from floating-point targets and classification from anything else."""
    if kind is not None and kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS} or None; got {kind!r}")
    x, y, task = _load(path, label)
    _check_rows(path, label, x, y, task)
    features = _features(path, x)
    kind = kind or ("regression" if np.issubdtype(y.dtype, np.floating) else "classification")
    if kind == "regression":
        pool = _regression_pool(path, label, features, y, task)
    else:
        pool = _classification_pool(path, label, features, y)
    details = {"source": path.name, "examples": int(x.shape[0])}
    return pool_family(path.stem, kind, pool, list(pool.names), seed, details)


def _load(path: Path, label: str) -> Columns:
    """The file's columns, by suffix; a missing file or an unknown suffix is refused."""
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return _load_npz(path, label)
    if suffix == ".csv":
        return _load_csv(path, label)
    raise ValueError(f"{path.name}: unknown suffix {path.suffix!r}; give an .npz or a .csv file")


def _load_npz(path: Path, label: str) -> Columns:
    """``x``, ``label`` and the optional ``task`` of an npz; pickled (object) arrays are never loaded."""
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path.name}: not an .npz archive (a zip of .npy arrays, as np.savez writes)")
    with np.load(path, allow_pickle=False) as archive:
        for key in ("x", label):
            if key not in archive.files:
                raise ValueError(f"{path.name}: missing key {key!r}; found {sorted(archive.files)}")
        task = _npz_array(archive, TASK, path) if TASK in archive.files else None
        return _npz_array(archive, "x", path), _npz_array(archive, label, path), task


def _npz_array(archive: np.lib.npyio.NpzFile, key: str, path: Path) -> np.ndarray:
    """One array of the archive; numpy refuses object arrays without pickle, and so do we."""
    try:
        return np.asarray(archive[key])
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
        raise ValueError(
            f"{path.name}: cannot load key {key!r} ({error}); pickled (object) arrays are refused, "
            "save numbers or strings"
        ) from error


def _load_csv(path: Path, label: str) -> Columns:
    """A CSV with a header row: numeric feature columns, the ``label`` column and an optional ``task``."""
    with path.open(newline="") as file:
        rows = [row for row in csv.reader(file) if row]
    if not rows:
        raise ValueError(f"{path.name}: empty file; a CSV needs a header row naming its columns")
    header, body = rows[0], rows[1:]
    if label not in header:
        raise ValueError(f"{path.name}: missing column {label!r}; the header has {header}")
    features = [i for i, name in enumerate(header) if name not in (label, TASK)]
    if not features or not body:
        raise ValueError(f"{path.name}: a CSV needs feature columns besides {label!r} and data rows")
    for line, row in enumerate(body, start=2):
        if len(row) != len(header):
            raise ValueError(f"{path.name}: line {line} has {len(row)} fields; the header has {len(header)}")
    x = np.stack([_numeric_column(path, header[i], [row[i] for row in body]) for i in features], axis=1)
    y = _typed_column([row[header.index(label)] for row in body])
    task = np.array([row[header.index(TASK)] for row in body]) if TASK in header else None
    return x, y, task


def _numeric_column(path: Path, name: str, values: list[str]) -> np.ndarray:
    """A feature column as float64, naming the column and line of the first value that is not a number."""
    numbers = []
    for line, value in enumerate(values, start=2):
        try:
            numbers.append(float(value))
        except ValueError:
            raise ValueError(
                f"{path.name}: feature column {name!r} is not numeric (line {line}: {value!r})"
            ) from None
    return np.array(numbers)


def _typed_column(values: list[str]) -> np.ndarray:
    """A label column as integers if every value is one, else floats if every value is one, else strings,
    so that ``kind=None`` reads a CSV the way it reads an npz."""
    for parse in (int, float):
        try:
            return np.array([parse(value) for value in values])
        except ValueError:
            continue
    return np.array(values)


def _check_rows(path: Path, label: str, x: np.ndarray, y: np.ndarray, task: np.ndarray | None) -> None:
    """Every field holds one entry per row of ``x``, and there is at least one row."""
    if x.ndim == 0 or x.shape[0] == 0:
        raise ValueError(f"{path.name}: field 'x' holds no rows (shape {x.shape})")
    fields = {label: y} if task is None else {label: y, TASK: task}
    for name, values in fields.items():
        if values.ndim == 0 or values.shape[0] != x.shape[0]:
            raise ValueError(
                f"{path.name}: field 'x' has {x.shape[0]} rows but {name!r} has shape {values.shape}"
            )
    if task is not None and task.ndim != 1:
        raise ValueError(f"{path.name}: field {TASK!r} must hold one task per row; got shape {task.shape}")


def _features(path: Path, x: np.ndarray) -> torch.Tensor:
    """``x`` as float32 ``[N, *features]`` (a 1-D x is one feature per row), finite throughout."""
    if x.dtype.kind not in "biuf":
        raise ValueError(f"{path.name}: field 'x' must be numeric; got dtype {x.dtype}")
    shape = (1,) if x.ndim == 1 else x.shape[1:]
    features = x.astype(np.float32).reshape(x.shape[0], *shape)
    _check_finite(path, "x", features)
    return torch.from_numpy(features)


def _check_finite(path: Path, name: str, values: np.ndarray) -> None:
    """Refuse NaN and infinity (also float64 values beyond float32's range), naming the first bad row."""
    bad = np.flatnonzero(~np.isfinite(values.reshape(values.shape[0], -1)).all(axis=1))
    if bad.size:
        raise ValueError(
            f"{path.name}: field {name!r} holds non-finite values (NaN or infinity) in {bad.size} row(s), "
            f"first row {bad[0]}"
        )


def _classification_pool(path: Path, label: str, x: torch.Tensor, y: np.ndarray) -> Pool:
    """One class per distinct label, each class its own group for the split."""
    if y.ndim != 1:
        raise ValueError(f"{path.name}: field {label!r} must hold one label per row; got shape {y.shape}")
    if np.issubdtype(y.dtype, np.floating):
        _check_finite(path, label, y)
    pool = pool_from_labels(x, y.tolist())
    _check_three(path, label, pool, "classes")
    return pool


def _regression_pool(path: Path, label: str, x: torch.Tensor, y: np.ndarray, task: np.ndarray | None) -> Pool:
    """One group per task; targets float32 ``[N, outputs]`` (a 1-D target is one output)."""
    if task is None:
        raise ValueError(
            f"{path.name}: regression needs a {TASK!r} field grouping rows into tasks; none found"
        )
    if y.dtype.kind not in "biuf" or y.ndim > 2:
        raise ValueError(
            f"{path.name}: regression targets {label!r} must be numeric [N] or [N, outputs]; "
            f"got dtype {y.dtype}, shape {y.shape}"
        )
    targets = y.astype(np.float32).reshape(y.shape[0], -1)
    _check_finite(path, label, targets)
    pool = pool_from_labels(x, task.tolist(), torch.from_numpy(targets))
    _check_three(path, TASK, pool, "tasks")
    return pool


def _check_three(path: Path, name: str, pool: Pool, unit: str) -> None:
    """Meta-train, meta-val and meta-test each need a class (or task) of their own."""
    if pool.classes < 3:
        raise ValueError(
            f"{path.name}: field {name!r} has {pool.classes} {unit} {list(pool.names)}; "
            f"three disjoint splits (meta-train/val/test) need at least 3"
        )
