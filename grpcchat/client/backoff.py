"""Jittered exponential backoff for reconnecting clients."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Backoff:
    """Delays that double from `initial` up to `maximum`, each drawn uniformly from
    [delay/2, delay] so that clients cut off together do not all return together."""

    initial: float = 0.2
    maximum: float = 5.0
    _attempt: int = field(default=0, init=False)

    def next_delay(self) -> float:
        # The exponent stops growing once past the maximum: 2.0**1024 overflows, about an hour
        # into retrying a server that stays away.
        ceiling = min(self.maximum, self.initial * 2.0 ** min(self._attempt, 64))
        self._attempt += 1
        import random

        return random.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self._attempt = 0
