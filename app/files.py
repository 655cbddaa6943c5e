"""Durable files: whole on disk or not at all, so a crash never leaves a truncated checkpoint or session."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

__all__ = ["write_atomically", "write_new"]

Opened = TypeVar("Opened")


def write_atomically(path: Path, data: bytes, mode: int = 0o600, durable: bool = True) -> None:
    """Write ``data`` through a temporary file in the same directory renamed over ``path``, so any crash of
    the process leaves the old file or the new one. ``durable`` also fsyncs the file before the rename and
    the directory after it, so the new file survives a power loss too. ``mode`` sets the permissions."""
    prefix = f".{path.name}."
    descriptor, partial = _in(
        path.parent, lambda: tempfile.mkstemp(dir=path.parent, prefix=prefix, suffix=".partial")
    )
    try:
        _fill(descriptor, data, mode, durable)
        os.replace(partial, path)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise
    if durable:
        _sync_directory(path.parent)


def write_new(path: Path, data: bytes, mode: int = 0o600, durable: bool = True) -> None:
    """Write ``data`` to ``path``, which must not exist yet, straight under its name: one change to the
    directory where ``write_atomically`` makes two (on this VM's ext4, 23 against 45 µs a file). For files
    that nothing reads until their writer names them, such as a session's, named by its row once written:
    a crash mid-write leaves a partial file that nothing names, for the sweep of orphans."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    descriptor = _in(path.parent, lambda: os.open(path, flags, mode))
    try:
        _fill(descriptor, data, mode, durable)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    if durable:
        _sync_directory(path.parent)


def _in(directory: Path, create: Callable[[], Opened]) -> Opened:
    """``create()`` a file in ``directory``, making the directory first only when it is missing."""
    try:
        return create()
    except FileNotFoundError:
        directory.mkdir(parents=True, exist_ok=True)
        return create()


def _fill(descriptor: int, data: bytes, mode: int, durable: bool) -> None:
    """Give a new file its permissions and contents (fsynced when ``durable``), then close it."""
    try:
        os.fchmod(descriptor, mode)
        left = memoryview(data)
        while left:
            left = left[os.write(descriptor, left) :]
        if durable:
            os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _sync_directory(directory: Path) -> None:
    """Fsync a directory, so that the names made in it survive a power loss."""
    handle = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)
