"""Per-source rate limits (off unless a source has one): a token bucket per source in this process."""

from __future__ import annotations

import math
import time


class RateLimiter:
    def __init__(self) -> None:
        self._buckets: dict[tuple[str, str], tuple[float, float]] = {}  # tokens, updated_at

    def take(self, key: tuple[str, str], rate_per_s: float, cost: int = 1) -> float:
        """Takes `cost` tokens; returns 0 when allowed, else the seconds to wait before retrying."""
        now = time.monotonic()
        capacity = max(rate_per_s, cost)  # a one-second burst, and never less than one whole request
        tokens, updated_at = self._buckets.get(key, (capacity, now))
        tokens = min(capacity, tokens + (now - updated_at) * rate_per_s)
        if tokens < cost:
            self._buckets[key] = (tokens, now)
            return max(1.0, math.ceil((cost - tokens) / rate_per_s))
        self._buckets[key] = (tokens - cost, now)
        return 0.0
