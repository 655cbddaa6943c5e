"""Any image as the model's input, like Omniglot: 1 x size x size float32 in [0, 1], ink bright on dark,
cropped to the ink, scaled to the glyphs' convention (``INK_EXTENT``) and centred. The folder family
and the service's uploads both go through here."""

from __future__ import annotations

import numpy as np
from PIL import Image

from app.meta.tasks.glyphs import INK_EXTENT

__all__ = ["image_to_input"]

# Faint paper noise (scans, JPEG ringing) below this much of the strongest ink does not widen the crop.
INK_THRESHOLD = 0.2


def image_to_input(image: Image.Image, size: int) -> np.ndarray:
    """``image`` (any mode, either polarity) as a ``[1, size, size]`` float32 array in [0, 1] where ink is
    1 and paper 0, cropped to the ink's bounding box, scaled to ``INK_EXTENT`` of the side (aspect kept)
    and centred."""
    if size < 1:
        raise ValueError(f"image size must be >= 1; got {size}")
    ink = _ink(_grey(image))
    mask = ink > INK_THRESHOLD
    if not mask.any():
        return np.zeros((1, size, size), dtype=np.float32)
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return _fit(ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1], size)[None]


def _grey(image: Image.Image) -> np.ndarray:
    """Grey levels as float32 in the image's own range (16-bit and float images are not clipped to 8 bits);
    transparent pixels become paper of the colour opposite the drawing, so strokes on a transparent canvas
    show whatever their colour."""
    if image.mode in ("I", "F") or image.mode.startswith("I;"):
        return np.asarray(image, dtype=np.float32)
    if "A" not in image.getbands() and "transparency" not in image.info:
        return np.asarray(image.convert("L"), dtype=np.float32)
    rgba = image.convert("RGBA")
    grey = np.asarray(rgba.convert("L"), dtype=np.float32)
    alpha = np.asarray(rgba.getchannel("A"), dtype=np.float32) / 255
    drawing = float((grey * alpha).sum() / max(float(alpha.sum()), 1e-6))
    paper = 0.0 if drawing > 127.5 else 255.0
    return alpha * grey + (1 - alpha) * paper


def _ink(grey: np.ndarray) -> np.ndarray:
    """Ink 1, paper 0: flip when the border (the paper) is mostly light, then stretch from the paper's level
    to the strongest ink, so dark-on-light and light-on-dark drawings give the same input."""
    border = np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
    if np.median(border) > (grey.min() + grey.max()) / 2:
        grey, border = -grey, -border
    paper = float(np.median(border))
    span = float(grey.max()) - paper
    if span <= 0:
        return np.zeros_like(grey)
    return np.clip((grey - paper) / span, 0, 1).astype(np.float32)


def _fit(ink: np.ndarray, size: int) -> np.ndarray:
    """Scale ``ink`` so its longer side spans ``INK_EXTENT`` of ``size``; centre it on a blank square."""
    height, width = ink.shape
    scale = INK_EXTENT * size / max(height, width)
    new_height, new_width = max(1, round(height * scale)), max(1, round(width * scale))
    resized = Image.fromarray(ink).resize((new_width, new_height), Image.Resampling.BILINEAR)
    out = np.zeros((size, size), dtype=np.float32)
    top, left = (size - new_height) // 2, (size - new_width) // 2
    out[top : top + new_height, left : left + new_width] = np.clip(np.asarray(resized), 0, 1)
    return out
