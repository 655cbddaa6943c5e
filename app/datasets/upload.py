"""An upload read to disk under a byte limit, and the formats a dataset upload may have."""

from __future__ import annotations

from pathlib import Path, PurePath
from typing import IO

__all__ = ["CHUNK", "FORMATS", "TooLarge", "copy_at_most", "format_of"]

FORMATS = ("npz", "csv", "zip")
"""Arrays (``x``, ``y``), a CSV with a header row, or a zip of images in class folders."""
CHUNK = 2**20


class TooLarge(Exception):  # noqa: N818 (the API's word for a 413)
    """An upload over its byte limit; the message names the field and the limit."""


def copy_at_most(source: IO[bytes], path: Path, limit: int) -> int:
    """Copy ``source`` to the new file ``path`` a chunk at a time and return the bytes copied; raise
    ``TooLarge`` on reading byte ``limit + 1``, so nothing past the limit is read or written."""
    copied = 0
    with path.open("xb") as sink:
        while chunk := source.read(min(CHUNK, limit + 1 - copied)):
            copied += len(chunk)
            if copied > limit:
                raise TooLarge(f"file: larger than the limit of {limit} bytes")
            sink.write(chunk)
    return copied


def format_of(format: str | None, filename: str | None) -> str:
    """``format``, or when it is None or blank (an empty form field) the suffix of ``filename``; either must
    be one of ``FORMATS``."""
    formats = ", ".join(FORMATS)
    if format:
        if format not in FORMATS:
            raise ValueError(f"format: unknown format {format!r}; give one of {formats}")
        return format
    suffix = PurePath(filename or "").suffix.lower().removeprefix(".")
    if suffix not in FORMATS:
        raise ValueError(
            f"format: cannot tell the format from the file name {filename!r}; give one of {formats}"
        )
    return suffix
