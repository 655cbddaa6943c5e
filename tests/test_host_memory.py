"""Freed host memory stays mapped once ``keep_freed_memory`` ran, so large tensors stop faulting in."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

FAULTS = """
import resource, sys, threading
import torch
from app.meta.host_memory import keep_freed_memory

kept = sys.argv[1] == "keep" and keep_freed_memory()
found = []

def allocate() -> None:  # in a thread, as the service's batcher computes: its own arena by default
    for _ in range(10):  # until the heap has room for the tensor beside the small blocks between
        torch.ones(24 * 2**20)  # 96 MiB, freed at once
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        torch.ones(24 * 2**20)
    found.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)

thread = threading.Thread(target=allocate)
thread.start()
thread.join()
print(kept, found[0])
"""


def faults(mode: str) -> tuple[str, int]:
    """Whether memory was kept, and the page faults of five 96 MiB tensors allocated one after another
    after ten others."""
    done = subprocess.run([sys.executable, "-c", FAULTS, mode], capture_output=True, text=True, check=True)
    kept, count = done.stdout.split()
    return kept, int(count)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_tensors_reuse_freed_memory_instead_of_faulting_it_in_again() -> None:
    pages = 96 * 2**20 // 4096
    _, default = faults("default")
    assert default > 4 * pages, "by default each tensor maps, and faults in, memory of its own"
    kept, with_memory_kept = faults("keep")
    assert kept == "True"
    assert with_memory_kept < pages / 4, "the tensors reuse the memory of those freed before them"
