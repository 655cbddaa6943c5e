"""A least-recently-used cache of adapted tensors on the device, bounded by the bytes they hold."""

from __future__ import annotations

import threading
from collections import OrderedDict

from app.meta import Params

__all__ = ["ParamsCache"]


def _bytes(params: Params) -> int:
    return sum(t.numel() * t.element_size() for t in params.values())


class ParamsCache:
    """Parameter sets by key; putting one evicts the least recently used until the total fits
    ``capacity_bytes``. A set larger than the whole capacity is not kept. Safe to share across threads."""

    def __init__(self, capacity_bytes: int) -> None:
        self.capacity_bytes = capacity_bytes
        self.size_bytes = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        self._entries: OrderedDict[str, tuple[Params, int]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def get(self, key: str) -> Params | None:
        """The set under ``key``, now the most recently used, or None (counted as a miss)."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.misses += 1
                return None
            self.hits += 1
            self._entries.move_to_end(key)
            return entry[0]

    def put(self, key: str, params: Params) -> None:
        size = _bytes(params)
        with self._lock:
            self._remove(key)
            if size > self.capacity_bytes:
                return
            while self.size_bytes + size > self.capacity_bytes:
                _, (_, evicted) = self._entries.popitem(last=False)
                self.size_bytes -= evicted
                self.evictions += 1
            self._entries[key] = (params, size)
            self.size_bytes += size

    def discard(self, key: str) -> None:
        with self._lock:
            self._remove(key)

    def _remove(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self.size_bytes -= entry[1]
