"""The ``glyphs`` family from the Hershey fonts (MIT-licensed ``Hershey-Fonts`` package): each font an
alphabet, each glyph (and each of its quarter turns) a class; rendered once per seed and cached."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from HersheyFonts import HersheyFonts

from app.meta.tasks.family import PoolFamily, pool_family
from app.meta.tasks.glyphs import JITTER, Glyph, Jitter, distinct_glyphs, render_clean, render_examples
from app.meta.tasks.pools import Pool

__all__ = ["GLYPHS_VERSION", "glyphs_family", "hershey_glyphs"]

# Bump when rendering changes, so stale caches are never reused.
GLYPHS_VERSION = 2
QUARTER_TURNS = 4


def hershey_glyphs() -> list[tuple[str, str, list[np.ndarray]]]:
    """Every non-empty glyph of every built-in Hershey font as ``(font, character, strokes)``."""
    fonts = HersheyFonts()
    glyphs = []
    for font in sorted(fonts.default_font_names):
        fonts.load_default_font(font)
        for character, glyph in fonts.all_glyphs.items():
            strokes = [np.asarray(s, dtype=np.float32) for s in glyph.strokes if len(s) > 0]
            if strokes:
                glyphs.append((font, character, strokes))
    return glyphs


def _render_pool(
    seed: int, examples: int, size: int, jitter: Jitter, threshold: float
) -> tuple[Pool, list[str]]:
    """All classes, near-duplicates merged, ``examples`` drawings each, and each class's font."""
    sources = hershey_glyphs()
    glyphs = [
        (font, f"{font}/{ord(char):04x}/r{turn}", Glyph.of(strokes, turn))
        for turn in range(QUARTER_TURNS)
        for font, char, strokes in sources
    ]
    owner = distinct_glyphs(torch.stack([render_clean(g, size) for _, _, g in glyphs]), threshold)
    members: dict[int, list[int]] = {}
    for index, representative in enumerate(owner):
        members.setdefault(representative, []).append(index)
    generator = torch.Generator().manual_seed(seed)
    images, names, fonts = [], [], []
    for representative, indices in members.items():
        # A merged class draws its examples from all its near-identical members in turn.
        per_member = [len(range(m, examples, len(indices))) for m in range(len(indices))]
        drawn = [
            render_examples(glyphs[i][2], n, generator, size, jitter)
            for i, n in zip(indices, per_member, strict=True)
            if n
        ]
        images.append(torch.cat(drawn))
        names.append(glyphs[representative][1])
        fonts.append(glyphs[representative][0])
    x = torch.cat(images)
    offsets = torch.arange(len(names) + 1) * examples
    return Pool(x, offsets, tuple(names)), fonts


def glyphs_family(
    seed: int = 0,
    cache_dir: Path = Path("data/cache"),
    examples: int = 20,
    size: int = 28,
    jitter: Jitter = JITTER,
    threshold: float = 0.85,
) -> PoolFamily:
    """The glyphs family for ``seed``: rendered on first use (about a minute) and loaded from
    ``cache_dir`` after; fonts are dealt to meta-train/val/test by ``seed``, so a font never straddles."""
    recipe = {
        "version": GLYPHS_VERSION,
        "seed": seed,
        "examples": examples,
        "size": size,
        "jitter": asdict(jitter),
        "threshold": threshold,
    }
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"glyphs-{key}.npz"
    if not path.exists():
        pool, fonts = _render_pool(seed, examples, size, jitter, threshold)
        _save_atomically(path, pool, fonts)
    # Always read back what the cache holds (8-bit), so a first run and a resumed one see the same pixels.
    with np.load(path, allow_pickle=False) as stored:
        x = torch.from_numpy(stored["x"].astype(np.float32) / 255)
        names, fonts = [str(n) for n in stored["names"]], [str(f) for f in stored["fonts"]]
    pool = Pool(x, torch.arange(len(names) + 1) * examples, tuple(names))
    details = {"source": "Hershey-Fonts", "examples_per_class": examples, "recipe": recipe}
    return pool_family("glyphs", "classification", pool, fonts, seed, details)


def _save_atomically(path: Path, pool: Pool, fonts: list[str]) -> None:
    """Write 8-bit pixels to a temporary file and rename, so a crash never leaves a truncated cache."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial.npz")
    pixels = (pool.x * 255).round().to(torch.uint8).numpy()
    np.savez_compressed(partial, x=pixels, names=np.array(pool.names), fonts=np.array(fonts))
    os.replace(partial, path)
