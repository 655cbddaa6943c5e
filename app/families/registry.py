"""Task families by name, built from the options a training command or job spec gives."""

from __future__ import annotations

from pathlib import Path

from app.families.folder import folder_family
from app.families.glyphs import glyphs_family
from app.meta.tasks.arrays import arrays_family
from app.meta.tasks.family import Family, SinusoidFamily

__all__ = ["FAMILIES", "build_family"]

FAMILIES = ("sinusoid", "glyphs", "folder", "arrays")


def build_family(
    name: str, seed: int, data: Path | None = None, cache_dir: Path = Path("data/cache")
) -> Family:
    """The family ``name``: ``folder`` and ``arrays`` read the dataset at ``data``; the others need none."""
    if name not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}; got {name!r}")
    if name in ("folder", "arrays"):
        if data is None:
            raise ValueError(f"the {name} family needs a dataset path (--data)")
        return folder_family(Path(data), seed) if name == "folder" else arrays_family(Path(data), seed)
    if data is not None:
        raise ValueError(f"the {name} family generates its tasks; it takes no dataset path")
    return SinusoidFamily() if name == "sinusoid" else glyphs_family(seed, cache_dir)
