"""Folders of images become a task family (Omniglot's alphabet/character layout splits by alphabet), and
``image_to_input`` turns any drawing into Omniglot-like input whatever its polarity, position or aspect."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from app.families.folder import folder_family
from app.families.images import image_to_input
from app.meta.tasks.family import PoolFamily
from app.meta.tasks.glyphs import INK_EXTENT
from tests.conftest import drawing, write_dataset


def alphabet_classes(alphabets: int, characters: int) -> list[str]:
    return [f"alphabet{a}/character{c}" for a in range(alphabets) for c in range(characters)]


def split_names(family: PoolFamily) -> dict[str, set[str]]:
    return {split: set(pool.names) for split, pool in family.splits.items()}


def test_two_level_layout_splits_by_alphabet(tmp_path: Path) -> None:
    classes = alphabet_classes(5, 3)
    root = write_dataset(tmp_path / "omniglot", classes)

    for seed in range(5):
        family = folder_family(root, seed)
        names = split_names(family)
        alphabets = {split: {name.split("/")[0] for name in n} for split, n in names.items()}
        assert all(alphabets.values())
        assert not (alphabets["train"] & alphabets["val"] or alphabets["train"] & alphabets["test"])
        assert not alphabets["val"] & alphabets["test"]
        assert names["train"] | names["val"] | names["test"] == set(classes)
    assert family.input_shape == (1, 28, 28)
    described = family.describe()
    assert described["layout"] == "alphabet/character"
    assert (described["examples"], described["source"]) == (45, "omniglot")


def test_one_level_layout_reads_every_image_suffix_and_splits_by_class(tmp_path: Path) -> None:
    suffixes = [".png", ".JPG", ".bmp", ".gif", ".jpeg"]
    for index in range(4):
        (tmp_path / f"class{index}").mkdir()
        for variant, suffix in enumerate(suffixes):
            drawing(index, variant).save(tmp_path / f"class{index}" / f"{variant}{suffix}")
    (tmp_path / "class0" / "notes.txt").write_text("not an image")
    (tmp_path / "class0" / "._0.png").write_bytes(b"macOS resource fork, not an image")

    family = folder_family(tmp_path, seed=0, size=16)

    names = split_names(family)
    assert names["train"] | names["val"] | names["test"] == {f"class{i}" for i in range(4)}
    assert sum(len(n) for n in names.values()) == 4
    assert family.input_shape == (1, 16, 16)
    assert family.describe()["examples"] == 20


def test_folder_splits_are_the_same_for_a_seed_and_differ_for_another(tmp_path: Path) -> None:
    root = write_dataset(tmp_path, [f"class{i:02d}" for i in range(12)], per_class=1)

    first, again, other = (split_names(folder_family(root, seed)) for seed in (0, 0, 1))

    assert first == again
    assert first != other


def test_sampled_folder_tasks_have_the_asked_shapes_and_unit_range(tmp_path: Path) -> None:
    family = folder_family(write_dataset(tmp_path, [f"class{i}" for i in range(10)]), seed=0)

    batch = family.sample(torch.Generator().manual_seed(0), "train", tasks=2, ways=3, shots=1, queries=2)

    assert tuple(batch.support_x.shape) == (2, 3, 1, 28, 28)
    assert tuple(batch.query_x.shape) == (2, 6, 1, 28, 28)
    assert torch.equal(batch.query_y, torch.tensor([0, 0, 1, 1, 2, 2]).expand(2, -1))
    images = torch.cat([batch.support_x, batch.query_x], dim=1)
    assert float(images.min()) == 0.0
    assert torch.equal(images.amax(dim=(2, 3, 4)), torch.ones(2, 9))


def mixed(root: Path) -> Path:
    write_dataset(root, ["plain", "alphabet/character"])
    return root


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda root: root / "absent", "no such directory"),
        (lambda root: write_dataset(root, ["a"]) / "a" / "0.png", "no such directory"),
        (lambda root: root, "no class directories with images"),
        (mixed, "mixed layouts: 'plain' holds images directly but 'alphabet/character'"),
        (lambda root: write_dataset(root, alphabet_classes(2, 3)), "2 alphabets \\(alphabet0, alphabet1\\)"),
        (lambda root: write_dataset(root, ["a", "b"]), "2 classes \\(a, b\\); three disjoint splits"),
    ],
)
def test_bad_folders_are_refused(tmp_path: Path, make: Callable[[Path], Path], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        folder_family(make(tmp_path), seed=0)


@pytest.mark.parametrize("truncate", [True, False])
def test_undecodable_image_is_named_in_the_error(tmp_path: Path, truncate: bool) -> None:
    root = write_dataset(tmp_path, ["a", "b", "c"])
    good = (root / "a" / "0.png").read_bytes()
    (root / "b" / "bad.png").write_bytes(good[: len(good) // 2] if truncate else b"garbage")

    with pytest.raises(ValueError, match=r"bad\.png: cannot decode image"):
        folder_family(root, seed=0)


@pytest.mark.parametrize(("ink", "paper"), [(255, 0), (40, 200), (180, 20)])
def test_either_polarity_gives_the_same_input_as_black_on_white(ink: int, paper: int) -> None:
    reference = image_to_input(drawing(3), 28)

    converted = image_to_input(drawing(3, ink=ink, paper=paper), 28)

    assert reference.shape == (1, 28, 28) and reference.dtype == np.float32
    assert (reference.min(), reference.max()) == (0.0, 1.0)
    assert float(np.abs(converted - reference).max()) < 1e-5


@pytest.mark.parametrize("stroke", [(0, 0, 0, 255), (255, 255, 255, 255)])
def test_strokes_on_a_transparent_canvas_read_as_ink_whatever_their_colour(stroke: tuple[int, ...]) -> None:
    canvas = drawing(3, ink=stroke, paper=(0, 0, 0, 0), mode="RGBA")

    assert float(np.abs(image_to_input(canvas, 28) - image_to_input(drawing(3), 28)).max()) < 1e-5


def test_sixteen_bit_images_are_not_clipped_to_eight_bits() -> None:
    eight_bit = drawing(3)
    sixteen_bit = Image.fromarray(np.asarray(eight_bit).astype(np.uint16) * 200)

    assert sixteen_bit.mode.startswith("I;16")
    assert float(np.abs(image_to_input(sixteen_bit, 28) - image_to_input(eight_bit, 28)).max()) < 1e-5


def bar(box: tuple[int, int, int, int]) -> Image.Image:
    """A white filled rectangle on a black 60x60 canvas."""
    image = Image.new("L", (60, 60), 0)
    ImageDraw.Draw(image).rectangle(box, fill=255)
    return image


def test_crop_keeps_the_aspect_and_centres_the_ink() -> None:
    tall = image_to_input(bar((5, 20, 14, 49)), 28)[0]  # 10 wide, 30 tall
    moved = image_to_input(bar((40, 2, 49, 31)), 28)[0]
    wide = image_to_input(bar((20, 5, 49, 14)), 28)[0]  # 30 wide, 10 tall

    rows = np.flatnonzero((tall > 0.5).any(axis=1))
    cols = np.flatnonzero((tall > 0.5).any(axis=0))
    extent = round(INK_EXTENT * 28)  # the glyphs' convention: the longer side spans 70% of the image
    assert rows[-1] - rows[0] + 1 == extent and abs(rows[0] - (27 - rows[-1])) <= 1
    assert cols[-1] - cols[0] + 1 == round(10 * extent / 30)
    assert abs(cols[0] - (27 - cols[-1])) <= 1
    assert np.array_equal(moved, tall)
    assert np.allclose(wide, tall.T, atol=1e-6)


def test_blank_image_gives_a_blank_input() -> None:
    blank = image_to_input(Image.new("L", (30, 30), 255), 28)

    assert blank.shape == (1, 28, 28)
    assert not blank.any()
