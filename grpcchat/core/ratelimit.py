"""Per-user message rate limit: a token bucket per name."""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class TokenBucket:
    """`rate` tokens a second, at most `burst` saved up; one token per message."""

    rate: float
    burst: float
    _tokens: float = field(init=False)
    _updated: float = field(init=False, default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self._tokens = self.burst

    def take(self) -> float:
        """Spend a token and return 0, or return how many seconds until one is available."""
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
        self._updated = now
        if self._tokens >= 1:
            self._tokens -= 1
            return 0.0
        return (1 - self._tokens) / self.rate


class RateLimiter:
    """One bucket per user, created on first use; rate 0 disables limiting."""

    def __init__(self, rate: float, burst: float) -> None:
        self._rate = rate
        self._burst = max(burst, 1.0)
        self._buckets: dict[str, TokenBucket] = {}

    def wait_time(self, user: str) -> float:
        if self._rate <= 0:
            return 0.0
        bucket = self._buckets.get(user)
        if bucket is None:
            if len(self._buckets) > 100_000:
                self._buckets.clear()  # full buckets carry no state worth keeping
            bucket = self._buckets[user] = TokenBucket(self._rate, self._burst)
        return bucket.take()
