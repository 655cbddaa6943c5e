"""A user's arrays (.npz or CSV) become a task family: classes or tasks split disjointly by seed, and bad
files are refused with the file and the field named."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from app.meta.tasks.arrays import arrays_family
from app.meta.tasks.family import PoolFamily


def class_npz(path: Path, classes: int = 10, per_class: int = 6) -> Path:
    """Images ``[N, 1, 4, 4]`` filled with their class number, labelled by strings ``c00, c01, ...``."""
    labels = np.repeat([f"c{c:02d}" for c in range(classes)], per_class)
    values = np.repeat(np.arange(classes, dtype=np.float64), per_class)
    x = values[:, None, None, None] * np.ones((1, 1, 4, 4))
    np.savez(path, x=x, y=labels)
    return path


def write_csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    with path.open("w", newline="") as file:
        csv.writer(file).writerows([header, *rows])
    return path


def split_names(family: PoolFamily) -> dict[str, set[str]]:
    return {split: set(pool.names) for split, pool in family.splits.items()}


def assert_disjoint_cover(names: dict[str, set[str]], expected: set[str]) -> None:
    train, val, test = names["train"], names["val"], names["test"]
    assert train and val and test
    assert not (train & val or train & test or val & test)
    assert train | val | test == expected


def test_npz_string_labels_become_disjoint_classes(tmp_path: Path) -> None:
    family = arrays_family(class_npz(tmp_path / "digits.npz"), seed=0)

    assert family.kind == "classification"
    assert family.input_shape == (1, 4, 4)
    assert family.splits["train"].x.dtype == torch.float32
    assert_disjoint_cover(split_names(family), {f"c{c:02d}" for c in range(10)})
    described = family.describe()
    assert (described["source"], described["examples"]) == ("digits.npz", 60)
    assert sum(described["classes"].values()) == 10


def test_csv_int_labels_become_classes_with_their_feature_rows(tmp_path: Path) -> None:
    labels = [3, 7, 11, 20, 42]
    rows = [[label, -label + k, label] for label in labels for k in range(4)]
    family = arrays_family(write_csv(tmp_path / "points.csv", ["f0", "f1", "y"], rows), seed=1)

    assert family.kind == "classification"
    assert family.input_shape == (2,)
    assert_disjoint_cover(split_names(family), {str(label) for label in labels})
    for pool in family.splits.values():
        for c, name in enumerate(pool.names):
            x = pool.x[int(pool.offsets[c]) : int(pool.offsets[c + 1])]
            assert torch.equal(x[:, 0], torch.full((4,), float(name)))
            assert sorted(x[:, 1].tolist()) == [-float(name) + k for k in range(4)]


def test_regression_npz_groups_rows_into_tasks_by_task_key(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    task = np.repeat(np.arange(6), 10)
    x = rng.uniform(1, 2, size=60)
    np.savez(tmp_path / "lines.npz", x=x, y=(task + 1) * x, task=task)
    family = arrays_family(tmp_path / "lines.npz", seed=0)

    assert family.kind == "regression"
    assert family.input_shape == (1,)
    assert_disjoint_cover(split_names(family), {str(t) for t in range(6)})
    batch = family.sample(torch.Generator().manual_seed(0), "train", tasks=4, ways=0, shots=3, queries=5)
    assert [tuple(t.shape) for t in batch.tensors()] == [(4, 3, 1), (4, 3, 1), (4, 5, 1), (4, 5, 1)]
    train_slopes = {int(name) + 1 for name in family.splits["train"].names}
    for index in range(batch.tasks):
        sx, sy, qx, qy = batch.task(index)
        slopes = torch.cat([sy / sx, qy / qx]).flatten()
        assert torch.allclose(slopes, slopes[0].expand_as(slopes))
        assert round(float(slopes[0])) in train_slopes


def test_splits_are_the_same_for_a_seed_and_differ_for_another(tmp_path: Path) -> None:
    path = class_npz(tmp_path / "many.npz", classes=20, per_class=2)

    first, again, other = (split_names(arrays_family(path, seed)) for seed in (3, 3, 4))

    assert first == again
    assert first != other


def test_sampled_tasks_have_the_asked_shapes_and_one_class_per_label(tmp_path: Path) -> None:
    family = arrays_family(class_npz(tmp_path / "digits.npz"), seed=0)

    batch = family.sample(torch.Generator().manual_seed(0), "train", tasks=4, ways=3, shots=2, queries=3)

    assert tuple(batch.support_x.shape) == (4, 6, 1, 4, 4)
    assert tuple(batch.query_x.shape) == (4, 9, 1, 4, 4)
    assert torch.equal(batch.support_y, torch.tensor([0, 0, 1, 1, 2, 2]).expand(4, -1))
    assert torch.equal(batch.query_y, torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2]).expand(4, -1))
    train = {int(name[1:]) for name in family.splits["train"].names}
    for index in range(batch.tasks):
        sx, sy, qx, qy = batch.task(index)
        # Every example is filled with its class number: one number per label, three distinct classes.
        classes = [int(sx[sy == label].unique().item()) for label in range(3)]
        assert [int(qx[qy == label].unique().item()) for label in range(3)] == classes
        assert len(set(classes)) == 3 and set(classes) <= train


def test_too_few_classes_for_the_ways_names_the_split_and_numbers(tmp_path: Path) -> None:
    family = arrays_family(class_npz(tmp_path / "digits.npz"), seed=0)
    have = family.splits["test"].classes
    assert have < 5

    message = f"meta-test split: 5-way tasks need at least 5 classes; this split has {have}"
    with pytest.raises(ValueError, match=message):
        family.sample(torch.Generator().manual_seed(0), "test", tasks=1, ways=5, shots=1, queries=1)


def pickled(path: Path) -> Path:
    np.savez(path / "objects.npz", x=np.array([[1.0], [2.0], [3.0]], dtype=object), y=np.arange(3))
    return path / "objects.npz"


def mismatched(path: Path) -> Path:
    np.savez(path / "short.npz", x=np.zeros((10, 2)), y=np.arange(9))
    return path / "short.npz"


def missing_y(path: Path) -> Path:
    np.savez(path / "nolabels.npz", x=np.zeros((10, 2)))
    return path / "nolabels.npz"


def not_a_zip(path: Path) -> Path:
    (path / "garbage.npz").write_bytes(b"not a zip archive")
    return path / "garbage.npz"


def non_finite(path: Path) -> Path:
    x = np.ones((9, 2))
    x[4, 1] = np.nan
    np.savez(path / "nan.npz", x=x, y=np.arange(9) % 3)
    return path / "nan.npz"


def two_classes(path: Path) -> Path:
    np.savez(path / "binary.npz", x=np.zeros((8, 2)), y=np.arange(8) % 2)
    return path / "binary.npz"


def regression_without_tasks(path: Path) -> Path:
    return write_csv(path / "targets.csv", ["a", "y"], [[k, k / 2] for k in range(9)])


def text_feature(path: Path) -> Path:
    return write_csv(path / "colours.csv", ["size", "colour", "y"], [[1, 2, 0], [2, "red", 1], [3, 4, 2]])


@pytest.mark.parametrize(
    ("write", "message"),
    [
        (pickled, "pickled \\(object\\) arrays are refused"),
        (mismatched, "field 'x' has 10 rows but 'y' has shape \\(9,\\)"),
        (missing_y, "missing key 'y'"),
        (not_a_zip, "not an .npz archive"),
        (non_finite, "field 'x' holds non-finite values .* in 1 row\\(s\\), first row 4"),
        (two_classes, "field 'y' has 2 classes .* need at least 3"),
        (regression_without_tasks, "regression needs a 'task' field"),
        (text_feature, "feature column 'colour' is not numeric \\(line 3: 'red'\\)"),
        (lambda path: path / "absent.npz", "no such file"),
        (lambda path: write_csv(path / "table.tsv", ["a", "y"], [[1, 2]]), "unknown suffix '.tsv'"),
    ],
)
def test_bad_files_are_refused_naming_the_file_and_field(
    tmp_path: Path, write: Callable[[Path], Path], message: str
) -> None:
    path = write(tmp_path)

    with pytest.raises(ValueError, match=message) as error:
        arrays_family(path, seed=0)

    assert path.name in str(error.value)
