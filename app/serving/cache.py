"""Sessions' adapted tensors in memory, in two least-recently-used tiers bounded by the bytes they hold:
the device, then host memory; a session in neither is read from its file, the last tier."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import torch

from app.meta.flat import Flat

__all__ = ["SessionCache", "TierStats"]

CPU = torch.device("cpu")


@dataclass(frozen=True)
class TierStats:
    """One tier's counts since the cache was made and its contents now. A get looks in the device tier, and
    on a miss there in the host tier; an eviction pushes the least recently used entry out to make room
    (the device's down to the host tier)."""

    hits: int
    misses: int
    evictions: int
    entries: int
    size_bytes: int
    capacity_bytes: int


class _Tier:
    """One LRU level of entries by key, with its counts; the caller holds the cache's lock."""

    def __init__(self, capacity_bytes: int) -> None:
        self.capacity_bytes = capacity_bytes
        self.size_bytes = self.hits = self.misses = self.evictions = 0
        self.entries: OrderedDict[str, Flat] = OrderedDict()

    def get(self, key: str) -> Flat | None:
        """The entry, now the most recently used, or None; counted as a hit or a miss."""
        entry = self.entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        self.hits += 1
        self.entries.move_to_end(key)
        return entry

    def pop(self, key: str) -> Flat | None:
        entry = self.entries.pop(key, None)
        if entry is not None:
            self.size_bytes -= entry.tensor.nbytes
        return entry

    def add(self, key: str, entry: Flat) -> list[tuple[str, Flat]]:
        """Keep ``entry`` (``key`` absent) as the most recently used; returns what no longer fits: the least
        recently used entries evicted for it, or the entry itself when it exceeds the whole capacity."""
        size = entry.tensor.nbytes
        if size > self.capacity_bytes:
            return [(key, entry)]
        evicted: list[tuple[str, Flat]] = []
        while self.size_bytes + size > self.capacity_bytes:
            evicted.append(self.entries.popitem(last=False))
            self.size_bytes -= evicted[-1][1].tensor.nbytes
            self.evictions += 1
        self.entries[key] = entry
        self.size_bytes += size
        return evicted

    def stats(self) -> TierStats:
        return TierStats(
            self.hits, self.misses, self.evictions, len(self.entries), self.size_bytes, self.capacity_bytes
        )


class SessionCache:
    """Parameter sets by key on ``device``, at most ``device_bytes`` of tensors there, and at most
    ``host_bytes`` more in host memory. A set evicted from the device moves to the host (a copy; what the
    host evicts is dropped), and a host hit moves it back to the device: each set is in one tier at most.
    A set larger than a tier skips it: it goes to the host, or is not kept; one that only the host can
    hold is copied to the device on every get. On a CPU device both tiers are host memory and moving a
    set between them copies nothing: together they are one LRU of ``device_bytes + host_bytes``.

    Sets are ``Flat``: one tensor each, so the per-tensor overhead of Python and torch objects (measured
    in ``bench/resident.py``) is paid once per set. Budgets count the bytes the tensors hold: ``put``
    copies a set that views a larger tensor (a row of a batch's), so none is kept alive unaccounted.
    Safe to share across threads; copies between tiers happen under the lock."""

    def __init__(self, device: torch.device, device_bytes: int, host_bytes: int) -> None:
        if device_bytes < 0 or host_bytes < 0:
            raise ValueError(f"budgets must be >= 0 bytes; got device {device_bytes}, host {host_bytes}")
        self.device = device
        self._device = _Tier(device_bytes)
        self._host = _Tier(host_bytes)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._device.entries) + len(self._host.entries)

    def __contains__(self, key: str) -> bool:
        with self._lock:
            return key in self._device.entries or key in self._host.entries

    def get(self, key: str) -> Flat | None:
        """The set under ``key`` on the device, now the most recently used, or None."""
        with self._lock:
            entry = self._device.get(key)
            if entry is None:
                held = self._host.get(key)
                if held is not None:
                    entry = held.to(self.device)
                    if entry.tensor.nbytes <= self._device.capacity_bytes:
                        self._host.pop(key)
                        self._keep(key, entry)
        return entry

    def put(self, key: str, params: Flat) -> None:
        """Keep ``params`` under ``key`` on the device, replacing the set in either tier. A set that views a
        larger tensor (a row of a batch's) or lies elsewhere is copied; one whose tensor is all of its
        storage is kept as it is, handed over by its caller: a copy would only leave the allocator a hole
        the size of each set (``bench/resident.py`` measured twice the memory per Conv4 session)."""
        if not params.layout:
            raise ValueError("params: an empty set is not kept")
        tensor = params.tensor
        owned = tensor.device == self.device and tensor.untyped_storage().nbytes() == tensor.nbytes
        entry = params if owned else params.to(self.device, copy=True)
        with self._lock:
            self._device.pop(key)
            self._host.pop(key)
            self._keep(key, entry)

    def discard(self, key: str) -> None:
        """Forget ``key`` in both tiers (a deleted or expired session); an unknown key is no error."""
        with self._lock:
            self._device.pop(key)
            self._host.pop(key)

    def stats(self) -> dict[str, TierStats]:
        """Each tier's counts, by name: ``device`` and ``host``."""
        with self._lock:
            return {"device": self._device.stats(), "host": self._host.stats()}

    def _keep(self, key: str, entry: Flat) -> None:
        """Put ``entry`` in the device tier and demote what that pushes out to the host tier."""
        for demoted, old in self._device.add(key, entry):
            if old.tensor.nbytes <= self._host.capacity_bytes:
                self._host.add(demoted, old.to(CPU))
