"""Host memory that stays mapped once freed, so that torch's large CPU tensors do not fault in each call."""

from __future__ import annotations

import ctypes

__all__ = ["keep_freed_memory"]

_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
"""glibc's ``mallopt`` parameters (``malloc.h``)."""
_NEVER = 2**31 - 1


def keep_freed_memory() -> bool:
    """Have glibc's allocator keep freed memory for the next allocation instead of returning it to the
    system, process-wide; returns whether it could (False where the C library is not glibc).

    By default glibc maps each block over 128 KiB to 32 MiB afresh (and every larger one always), and
    unmaps it when freed; a thread's blocks come from arenas of 64 MiB at most. A Conv4 batch's
    activations are such blocks, so every pass took a page fault per 4 KiB touched: in the service's
    batcher thread on the 2-core VM of bench/README.md, up to a third of its time. Served from one arena
    that is never trimmed, 64 sessions' Conv4 predictions and adaptations ran 1.2-1.8x faster there; the
    process keeps its peak heap, as torch's CUDA allocator keeps its peak. Call it first thing in a
    process, before the threads that will compute start.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the process's own symbols, its C library's among them
    except (OSError, AttributeError):  # no mallopt: not glibc
        return False
    settings = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _NEVER))
    return all(mallopt(option, value) == 1 for option, value in settings)
