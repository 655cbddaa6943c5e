"""The glyphs family: handwriting-like renders of Hershey glyphs, over 1,000 classes split by font with
near-duplicates merged so none straddles two splits, deterministic from a seed and cached."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from app.families.glyphs import glyphs_family, hershey_glyphs
from app.meta.tasks.glyphs import Glyph, distinct_glyphs, render_clean, render_examples
from app.meta.tasks.pools import SPLITS

SQUARE = [np.array([[0, 0], [10, 0], [10, 10], [0, 10], [0, 0]]), np.array([[2, 5], [8, 5]])]


def test_examples_are_jittered_copies_that_a_seed_reproduces() -> None:
    glyph = Glyph.of(SQUARE)
    first = render_examples(glyph, 6, torch.Generator().manual_seed(3))
    again = render_examples(glyph, 6, torch.Generator().manual_seed(3))
    assert first.shape == (6, 1, 28, 28)
    assert torch.equal(first, again)
    assert float(first.min()) >= 0 and float(first.max()) == 1.0
    differences = (first[1:] - first[:1]).abs().flatten(1).sum(1)
    assert bool((differences > 5).all()), "every example must differ from the others"
    clean = render_clean(glyph).flatten()
    similarity = torch.nn.functional.cosine_similarity(first.flatten(1), clean[None])
    assert float(similarity.mean()) > 0.3, "examples must still resemble their glyph"


def test_quarter_turns_make_a_different_drawing() -> None:
    upright, turned = render_clean(Glyph.of(SQUARE)), render_clean(Glyph.of(SQUARE, quarter_turns=1))
    assert torch.equal(render_clean(Glyph.of(SQUARE, quarter_turns=4)), upright)
    assert not torch.allclose(upright, turned)


def test_near_identical_drawings_merge_into_the_first_without_chaining() -> None:
    base = torch.zeros(5, 8, 8)
    base[0, 2:6, 2:6] = 1
    base[1] = base[0]
    base[1, 2, 2] = 0  # nearly the same as 0
    base[2, 0:3, :] = 1  # unrelated
    base[3, 2:6, 2:7] = 1  # close to 0 (cosine ~0.89)
    base[4, 2:6, 3:8] = 1  # close to 3 but not to 0: must not chain onto 0's class
    owner = distinct_glyphs(base, threshold=0.88)
    assert owner[:4] == [0, 0, 2, 0]
    assert owner[4] == 4


def test_the_family_has_over_1000_classes_split_by_font_without_duplicates_across_splits(
    glyphs_cache: Path,
) -> None:
    family = glyphs_family(0, glyphs_cache)
    classes = {split: family.splits[split].names for split in SPLITS}
    assert sum(len(names) for names in classes.values()) >= 1000
    fonts = {split: {name.split("/")[0] for name in names} for split, names in classes.items()}
    assert all(fonts.values())
    assert not (
        fonts["train"] & fonts["val"] or fonts["train"] & fonts["test"] or fonts["val"] & fonts["test"]
    )
    assert all(int(pool.sizes.min()) == 20 for pool in family.splits.values())

    # Re-render every class's glyph clean: no class of one split may be a near-duplicate of another's.
    strokes = {(font, f"{ord(char):04x}"): s for font, char, s in hershey_glyphs()}
    clean = {}
    for split, names in classes.items():
        images = []
        for name in names:
            font, code, turn = name.split("/")
            images.append(render_clean(Glyph.of(strokes[font, code], int(turn[1:]))).flatten())
        clean[split] = torch.nn.functional.normalize(torch.stack(images), dim=1)
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        assert float((clean[a] @ clean[b].T).max()) <= 0.85


def test_the_family_is_cached_and_identical_when_rebuilt_from_its_seed(glyphs_cache: Path) -> None:
    first = glyphs_family(0, glyphs_cache)
    assert len(list(glyphs_cache.glob("glyphs-*.npz"))) == 1
    again = glyphs_family(0, glyphs_cache)
    for split in SPLITS:
        assert first.splits[split].names == again.splits[split].names
        assert torch.equal(first.splits[split].x, again.splits[split].x)
    tasks = first.sample(torch.Generator().manual_seed(0), "test", 2, 20, 1, 2)
    assert tasks.support_x.shape == (2, 20, 1, 28, 28)
