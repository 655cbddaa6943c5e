"""A lock on a file (``flock``): exclusive, held by one of the processes sharing a data directory at a
time, or shared by many; the kernel lets go of it when its process ends, however it ends, so another one
can take over."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

__all__ = ["FileLock"]


class FileLock:
    """An exclusive ``flock`` on ``path`` (created with its folder when missing), held from a successful
    ``acquire`` (or shared from ``share``) until ``release`` or the end of the process. Two instances
    exclude each other even in one process, and the programs it starts (a job's worker) do not inherit it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._descriptor: int | None = None

    @property
    def held(self) -> bool:
        """Whether this instance holds the lock."""
        return self._descriptor is not None

    def acquire(self) -> bool:
        """Take the lock unless another holder has it, without waiting; returns whether it is held now."""
        if self._descriptor is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BaseException as error:
                os.close(descriptor)
                if isinstance(error, BlockingIOError):  # another holder has it
                    return False
                raise
            self._descriptor = descriptor
        return True

    def share(self) -> None:
        """Hold the lock shared from now on, beside other sharers, waiting while an exclusive holder has
        it; a held exclusive lock becomes shared."""
        if self._descriptor is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self._descriptor, fcntl.LOCK_SH)

    def release(self) -> None:
        """Let go of the lock, if held."""
        if self._descriptor is not None:
            os.close(self._descriptor)
            self._descriptor = None
