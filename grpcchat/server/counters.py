"""What the gRPC side has done so far, as plain numbers (see `grpcchat.core.stats` for the
hub's): sessions open by stream kind, messages refused by status code, events written and how
long after their acceptance. Bumped on the event loop, read by the metrics endpoint, if any,
from its own thread."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

from grpcchat.core.models import Envelope
from grpcchat.core.stats import Histogram

# The session streams: the rich Connect stream, Subscribe (one room, read-only), and the
# article's Chat stream.
SessionKind = Literal["connect", "subscribe", "chat"]
SESSION_KINDS: tuple[SessionKind, ...] = ("connect", "subscribe", "chat")


class ServerStats:
    __slots__ = ("delivered", "fan_out", "refused", "sessions")

    def __init__(self) -> None:
        self.sessions: dict[SessionKind, int] = dict.fromkeys(SESSION_KINDS, 0)
        # Status code name -> messages refused with it (a few codes at most: a bounded label).
        self.refused: dict[str, int] = {}
        # Events written to session streams, counted per written batch.
        self.delivered = 0
        # Seconds from the hub accepting a live room message to its write, observed once per
        # written batch, for the oldest such message in it.
        self.fan_out = Histogram()

    @contextmanager
    def session_open(self, kind: SessionKind) -> Iterator[None]:
        """Count a session of `kind` as open for the duration of the block."""
        self.sessions[kind] += 1
        try:
            yield
        finally:
            self.sessions[kind] -= 1

    def refuse(self, code: str) -> None:
        """A message was refused with status `code` (its name, e.g. "INVALID_ARGUMENT")."""
        self.refused[code] = self.refused.get(code, 0) + 1

    def wrote(self, batch: list[Envelope]) -> None:
        """A batch was written to a session stream."""
        self.delivered += len(batch)
        for envelope in batch:
            if envelope.accepted_at:
                self.fan_out.observe(time.monotonic() - envelope.accepted_at)
                return
