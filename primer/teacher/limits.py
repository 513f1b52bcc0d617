"""Async rate limits: requests and tokens per minute, as token buckets."""

from __future__ import annotations

import asyncio
import time


class TokenBucket:
    """Refills ``rate_per_minute`` units per minute; holds one second's worth (at least one
    unit), so a burst at start is short and the rate holds over any window.

    ``acquire(n)`` waits until ``n`` units are available. A request larger than the bucket
    waits for a full bucket and takes it all, so it is slowed, never refused.
    """

    def __init__(self, rate_per_minute: float):
        self.rate = rate_per_minute / 60.0
        self.capacity = max(1.0, self.rate)
        self.level = self.capacity
        self.updated = time.monotonic()
        self._lock = asyncio.Lock()

    def _refill(self) -> None:
        now = time.monotonic()
        self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
        self.updated = now

    async def acquire(self, n: float = 1.0) -> None:
        n = min(n, self.capacity)
        async with self._lock:  # first come, first served
            self._refill()
            while self.level < n:
                await asyncio.sleep((n - self.level) / self.rate)
                self._refill()
            self.level -= n
