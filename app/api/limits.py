"""Per-key rate limits: a token bucket for each caller in this process's memory (each worker process of
``metaserve serve --workers N`` keeps its own, so a key's overall rate is up to N times the setting)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["RateLimiter"]

MAX_BUCKETS = 100_000
"""Buckets kept before the full ones (callers idle long enough to have refilled) are dropped."""


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """Up to ``burst`` requests at once per caller, refilled at ``per_second``; 0 turns the limit off."""

    def __init__(self, per_second: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_second, self.burst, self._clock = per_second, burst, clock
        self._buckets: dict[str | None, _Bucket] = {}

    def wait(self, caller: str | None) -> int:
        """Take a token for ``caller``: 0 when it may go on, else the seconds to wait (at least 1)."""
        if self.per_second <= 0:
            return 0
        now = self._clock()
        if len(self._buckets) >= MAX_BUCKETS:
            self._buckets = {k: b for k, b in self._buckets.items() if self._refilled(b, now) < self.burst}
        bucket = self._buckets.setdefault(caller, _Bucket(self.burst, now))
        bucket.tokens, bucket.updated = self._refilled(bucket, now), now
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return 0
        return max(1, math.ceil((1 - bucket.tokens) / self.per_second))

    def _refilled(self, bucket: _Bucket, now: float) -> float:
        return min(self.burst, bucket.tokens + (now - bucket.updated) * self.per_second)
