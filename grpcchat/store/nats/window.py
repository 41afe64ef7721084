"""`Window`: what the retention keeps of a room, in the engine's terms: the first seq the count
keeps after a given last one, and the oldest `sent_at` (in microseconds) the age keeps now."""

from __future__ import annotations

from datetime import UTC, datetime

from grpcchat.core.history import Retention
from grpcchat.store.nats import codec


class Window:
    def __init__(self, retention: Retention) -> None:
        self.max_messages = retention.max_messages
        self.max_age_us = codec.to_us(codec.from_us(0) + retention.max_age)
        self.dedup_us = codec.to_us(codec.from_us(0) + retention.dedup_window)

    def start(self, last_seq: int) -> int:
        """The first seq the count keeps in a room whose last entry is `last_seq`."""
        return last_seq - self.max_messages + 1

    def oldest_kept_us(self) -> int:
        return codec.to_us(datetime.now(UTC)) - self.max_age_us
