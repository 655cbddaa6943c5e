"""Durable files: whole on disk or not at all, so a crash never leaves a truncated checkpoint or session."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["write_atomically"]


def write_atomically(path: Path, data: bytes, mode: int = 0o600, durable: bool = True) -> None:
    """Write ``data`` through a temporary file in the same directory renamed over ``path``, so any crash of
    the process leaves the old file or the new one. ``durable`` also fsyncs the file before the rename and
    the directory after it, so the new file survives a power loss too. ``mode`` sets the permissions.
    Plain descriptor calls, and the directory made only when missing: a session file is written per
    /adapt."""
    try:
        descriptor, partial = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor, partial = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    try:
        try:
            os.fchmod(descriptor, mode)
            written = memoryview(data)
            while written:
                written = written[os.write(descriptor, written) :]
            if durable:
                os.fsync(descriptor)
        finally:
            os.close(descriptor)
        os.replace(partial, path)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise
    if not durable:
        return
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
