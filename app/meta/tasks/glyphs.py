"""Glyphs: an offline Omniglot-like image family. Stroke drawings (the Hershey fonts: each font an
alphabet, each glyph a character) rendered with handwriting-like jitter into 1x28x28 images.

Each example is the glyph redrawn: every stroke's ends wander (and drag the stroke with them), every
vertex trembles, the whole drawing is rotated, sheared, scaled and moved, and the pen width varies.
Near-identical characters (within or across alphabets) are merged by ``distinct_glyphs`` so that two
classes of one task, or of two splits, are never the same drawing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = ["INK_EXTENT", "JITTER", "Glyph", "Jitter", "distinct_glyphs", "render_clean", "render_examples"]

Strokes = Sequence[np.ndarray]


@dataclass(frozen=True)
class Jitter:
    """How far each drawing strays from the glyph (pixel figures are at 28x28 and scale with size)."""

    rotation: float = 8.0  # degrees, uniform +-
    shear: float = 0.12  # uniform +-
    scale: tuple[float, float] = (0.85, 1.05)  # per axis
    translation: float = 2.0  # pixels, uniform +-
    endpoint: float = 0.6  # pixels, std of each stroke end's displacement
    tremor: float = 0.2  # pixels, std of each vertex's displacement
    width: tuple[float, float] = (1.3, 2.3)  # pen width in pixels


@dataclass(frozen=True)
class Glyph:
    """A character as polylines, normalised to fit the unit box centred at 0 (aspect kept), then turned
    by ``quarter_turns`` x 90 degrees (Omniglot's augmentation: a turned character is a new class)."""

    vertices: Tensor  # [V, 2]
    stroke: Tensor  # [V] index of each vertex's stroke
    along: Tensor  # [V] position along its stroke, 0 at the start, 1 at the end
    segments: Tensor  # [S, 2] vertex indices of each segment

    @staticmethod
    def of(strokes: Strokes, quarter_turns: int = 0) -> Glyph:
        kept = [np.asarray(s, dtype=np.float32).reshape(-1, 2) for s in strokes if len(s) > 0]
        if not kept:
            raise ValueError("a glyph needs at least one stroke with a point")
        points = np.concatenate(kept)
        low, high = points.min(0), points.max(0)
        extent = max(float((high - low).max()), 1e-6)
        vertices, stroke, along, segments = [], [], [], []
        start = 0
        for index, polyline in enumerate(kept):
            if len(polyline) == 1:  # a dot: a segment of zero length still draws a round blob
                polyline = np.concatenate([polyline, polyline])
            steps = np.linalg.norm(np.diff(polyline, axis=0), axis=1)
            length = np.concatenate([[0.0], np.cumsum(steps)])
            vertices.append((polyline - (low + high) / 2) / extent)
            stroke.append(np.full(len(polyline), index))
            along.append(length / max(float(length[-1]), 1e-6))
            segments.append(np.stack([np.arange(len(polyline) - 1), np.arange(1, len(polyline))], 1) + start)
            start += len(polyline)
        xy = torch.from_numpy(np.concatenate(vertices)).float()
        turn = torch.tensor([[0.0, -1.0], [1.0, 0.0]]).matrix_power(quarter_turns % 4)
        return Glyph(
            xy @ turn.T,
            torch.from_numpy(np.concatenate(stroke)).long(),
            torch.from_numpy(np.concatenate(along)).float(),
            torch.from_numpy(np.concatenate(segments)).long(),
        )


INK_EXTENT = 0.7
"""The longer side of a character spans this fraction of the image (margins as in Omniglot); uploaded
and folder images are scaled to the same convention (``app/families/images.py``)."""

JITTER = Jitter()
"""The family's handwriting: strong enough that pixel nearest-neighbour stays far below a learner."""


def _rasterize(vertices: Tensor, glyph: Glyph, width: Tensor, size: int) -> Tensor:
    """Anti-aliased pen strokes: ink 1 within half the pen width of a segment, fading over one pixel.
    ``vertices [E, V, 2]`` in pixels, ``width [E]``; returns ``[E, 1, size, size]``."""
    centres = torch.arange(size, dtype=torch.float32) + 0.5
    py, px = torch.meshgrid(centres, centres, indexing="ij")
    pixels = torch.stack([px.flatten(), py.flatten()], 1)  # [P, 2]
    a, b = vertices[:, glyph.segments[:, 0]], vertices[:, glyph.segments[:, 1]]  # [E, S, 2]
    ab = b - a
    ap = pixels[None, :, None, :] - a[:, None]  # [E, P, S, 2]
    t = ((ap * ab[:, None]).sum(-1) / (ab * ab).sum(-1).clamp_min(1e-9)[:, None]).clamp(0, 1)
    distance = (ap - t[..., None] * ab[:, None]).norm(dim=-1).amin(-1)  # [E, P]
    ink = (width[:, None] / 2 + 0.5 - distance).clamp(0, 1)
    return ink.reshape(-1, 1, size, size)


def render_clean(glyph: Glyph, size: int = 28) -> Tensor:
    """The glyph without jitter, centred, its longer side ``INK_EXTENT`` of the image: ``[1, size, size]``."""
    vertices = glyph.vertices * (INK_EXTENT * size) + size / 2
    return _rasterize(vertices[None], glyph, torch.tensor([1.5 * size / 28]), size)[0]


def render_examples(
    glyph: Glyph, count: int, generator: torch.Generator, size: int = 28, jitter: Jitter = JITTER
) -> Tensor:
    """``count`` handwriting-like drawings of ``glyph``: ``[count, 1, size, size]`` in [0, 1], ink = 1."""
    scale_px = size / 28

    def uniform(low: float, high: float, *shape: int) -> Tensor:
        return torch.empty(*shape).uniform_(low, high, generator=generator)

    strokes = int(glyph.stroke.max()) + 1
    ends = torch.randn(count, strokes, 2, 2, generator=generator) * jitter.endpoint * scale_px
    start, end = ends[:, glyph.stroke, 0], ends[:, glyph.stroke, 1]  # [E, V, 2]
    drift = start + (end - start) * glyph.along[None, :, None]
    tremor = torch.randn(count, *glyph.vertices.shape, generator=generator) * jitter.tremor * scale_px

    angle = uniform(-jitter.rotation, jitter.rotation, count) * math.pi / 180
    shear = uniform(-jitter.shear, jitter.shear, count)
    scale = uniform(*jitter.scale, count, 2) * (INK_EXTENT * size)
    cos, sin = angle.cos(), angle.sin()
    rotate = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
    shear_m = torch.eye(2).repeat(count, 1, 1)
    shear_m[:, 0, 1] = shear
    linear = rotate @ shear_m @ torch.diag_embed(scale)  # [E, 2, 2]
    shift = uniform(-jitter.translation, jitter.translation, count, 2) * scale_px + size / 2

    placed = glyph.vertices[None] @ linear.transpose(1, 2) + shift[:, None] + drift + tremor
    width = uniform(*jitter.width, count) * scale_px
    return _rasterize(placed, glyph, width, size)


def distinct_glyphs(images: Tensor, threshold: float = 0.85) -> list[int]:
    """For each clean image, the index of the representative it merges into: the first earlier image
    whose pixel cosine similarity exceeds ``threshold``, else itself. Representatives are pairwise
    below the threshold, so merged classes never chain into one sprawling class."""
    flat = images.flatten(1).double()
    unit = flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-12)
    similarity = unit @ unit.T
    owner: list[int] = []
    representatives: list[int] = []
    for index in range(len(unit)):
        if representatives:
            scores = similarity[index, representatives]
            best = int(scores.argmax())
            if float(scores[best]) > threshold:
                owner.append(representatives[best])
                continue
        representatives.append(index)
        owner.append(index)
    return owner
