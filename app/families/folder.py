"""A task family from images on disk in Omniglot's layout ``root/alphabet/character/*.png`` or one level
``root/class/*.png``; alphabets never straddle meta-train, meta-val and meta-test."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from app.families.images import image_to_input
from app.meta.tasks.family import PoolFamily, pool_family
from app.meta.tasks.pools import pool_from_labels

__all__ = ["IMAGE_SUFFIXES", "folder_family"]

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif"})


def folder_family(root: Path, seed: int, size: int = 28) -> PoolFamily:
    """Every image under ``root`` as a ``1 x size x size`` input (see ``image_to_input``), one class per
    directory, split by ``seed`` a whole alphabet at a time (two levels) or a class at a time (one level)."""
    if size < 1:
        raise ValueError(f"image size must be >= 1; got {size}")
    layout, classes = _find_classes(root)
    labels = [name for name, files in classes.items() for _ in files]
    x = torch.from_numpy(np.stack([_load(file, size) for files in classes.values() for file in files]))
    pool = pool_from_labels(x, labels)
    # Class names are "alphabet/character" or "class": the part before the slash is the split's group.
    groups = [name.partition("/")[0] for name in pool.names]
    if len(set(groups)) < 3:
        unit = "alphabets" if layout == "alphabet/character" else "classes"
        raise ValueError(
            f"{root}: {len(set(groups))} {unit} ({', '.join(sorted(set(groups)))}); three disjoint splits "
            "(meta-train/val/test) need at least 3"
        )
    details = {"source": root.name, "layout": layout, "examples": len(labels), "image_size": size}
    return pool_family(root.name, "classification", pool, groups, seed, details)


def _find_classes(root: Path) -> tuple[str, dict[str, list[Path]]]:
    """The layout (``"alphabet/character"`` or ``"class"``) and each class's image files, by class name."""
    if not root.is_dir():
        raise ValueError(f"{root}: no such directory")
    one_level: dict[str, list[Path]] = {}
    two_level: dict[str, list[Path]] = {}
    for top in _subdirectories(root):
        if files := _images(top):
            one_level[top.name] = files
        for inner in _subdirectories(top):
            if files := _images(inner):
                two_level[f"{top.name}/{inner.name}"] = files
    if one_level and two_level:
        raise ValueError(
            f"{root}: mixed layouts: {next(iter(one_level))!r} holds images directly but "
            f"{next(iter(two_level))!r} is a character folder; use root/class/*.png or "
            "root/alphabet/character/*.png throughout"
        )
    if not (one_level or two_level):
        suffixes = " ".join(sorted(IMAGE_SUFFIXES))
        raise ValueError(
            f"{root}: no class directories with images ({suffixes}); expected root/class/*.png or "
            "root/alphabet/character/*.png"
        )
    return ("alphabet/character", two_level) if two_level else ("class", one_level)


def _subdirectories(directory: Path) -> list[Path]:
    """Visible subdirectories, sorted so classes are read in the same order everywhere."""
    return sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))


def _images(directory: Path) -> list[Path]:
    """The visible image files directly in ``directory`` (suffix case ignored), sorted; hidden ones such as
    macOS's ``._name.png`` resource forks are not images."""
    return sorted(
        p
        for p in directory.iterdir()
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )


def _load(file: Path, size: int) -> np.ndarray:
    """Decode one image into the model's input, naming the file when it cannot be decoded."""
    try:
        with Image.open(file) as image:
            return image_to_input(image, size)
    except (OSError, SyntaxError, Image.DecompressionBombError) as error:
        raise ValueError(f"{file}: cannot decode image ({error})") from error
