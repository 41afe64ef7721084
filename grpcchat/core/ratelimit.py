"""Per-client rate limits: a token bucket per principal (the authenticated user, or the peer
address without authentication), the least recently used forgotten first."""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from dataclasses import dataclass, field

# Buckets kept; past it the least recently used goes. A forgotten bucket comes back full, so
# the bound must exceed the clients active within a bucket's refill time (seconds) by far.
MAX_BUCKETS = 100_000


def retry_in(seconds: float) -> str:
    """When a refused request may be made again, for people, rounded up: "retry in 4ms" (a
    bucket that is nearly full again is a few milliseconds away, not "0.0s")."""
    if seconds < 1:
        return f"retry in {max(1, math.ceil(seconds * 1000))}ms"
    return f"retry in {math.ceil(seconds * 10) / 10:.1f}s"


@dataclass
class TokenBucket:
    """`rate` tokens a second, at most `burst` saved up; a token per request (more for one
    that costs more)."""

    rate: float
    burst: float
    _tokens: float = field(init=False)
    _updated: float = field(init=False, default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self._tokens = self.burst

    def take(self, cost: float = 1.0) -> float:
        """Spend `cost` tokens (at most the burst) and return 0, or return how many seconds
        until they are available."""
        cost = min(cost, self.burst)
        self._refill()
        if self._tokens >= cost:
            self._tokens -= cost
            return 0.0
        return (cost - self._tokens) / self.rate

    def spend(self, cost: float = 1.0) -> None:
        """Spend `cost` tokens, as many as there are, without asking (used on another node,
        or found to cost more once done)."""
        self._refill()
        self._tokens = max(0.0, self._tokens - cost)

    def _refill(self) -> None:
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
        self._updated = now


class RateLimiter:
    """One bucket per principal, created on first use; rate 0 disables limiting."""

    def __init__(self, rate: float, burst: float, max_buckets: int = MAX_BUCKETS) -> None:
        self._rate = rate
        self._burst = max(burst, 1.0)
        self._max_buckets = max_buckets
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def wait_time(self, principal: str, cost: float = 1.0) -> float:
        """0 if `principal` may make a request costing `cost` now (and it is counted), else
        the seconds until it may."""
        if self._rate <= 0:
            return 0.0
        return self._bucket(principal).take(cost)

    def charge(self, principal: str, cost: float = 1.0) -> None:
        """Count a request made elsewhere (another node), or the rest of one that turned out
        to cost more, against `principal`: its rate is then what it may spend in all. A
        principal not seen here yet gets its bucket now (else a user's first sends on each
        node each had a whole burst)."""
        if self._rate > 0:
            self._bucket(principal).spend(cost)

    def _bucket(self, principal: str) -> TokenBucket:
        """`principal`'s bucket, made on first use; the least recently used ones past
        `max_buckets` are forgotten (a forgotten principal starts again with a full burst)."""
        bucket = self._buckets.get(principal)
        if bucket is None:
            bucket = self._buckets[principal] = TokenBucket(self._rate, self._burst)
            if len(self._buckets) > self._max_buckets:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(principal)
        return bucket

    def __len__(self) -> int:
        return len(self._buckets)
