"""Domain types shared by the core, the server adapters and the client.

Nothing here knows about gRPC or protobuf.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

DEFAULT_ROOM = "lobby"


@dataclass(frozen=True, slots=True)
class Message:
    """A chat message as the server accepted it.

    `(seq, epoch)` is the message's position in its room: `seq` is strictly increasing, assigned
    by the server, the order every subscriber of the room sees; `epoch` names the history that
    numbered it (a new store starts a new epoch, and seqs of different epochs do not compare).
    `id`, `seq` and `epoch` are empty only when the peer is a server that does not assign them
    (the article's Go server).
    """

    id: str
    room: str
    sender: str
    text: str
    sent_at: datetime
    seq: int
    epoch: str = ""

    @property
    def position(self) -> Position:
        return Position(self.seq, self.epoch)


@dataclass(frozen=True, slots=True)
class Position:
    """A place in a room's history: everything with a greater seq (same epoch) comes after it."""

    seq: int
    epoch: str


class Envelope:
    """A message on its way to many sessions.

    Fan-out hands the same envelope to every session of a room; each wire format encodes the
    message once, on first use, and every other session reuses the bytes.
    """

    __slots__ = ("_encoded", "message")

    def __init__(self, message: Message) -> None:
        self.message = message
        self._encoded: dict[Callable[[Message], bytes], bytes] = {}

    def encoded(self, codec: Callable[[Message], bytes]) -> bytes:
        """The message encoded by `codec`, computed at most once per codec."""
        data = self._encoded.get(codec)
        if data is None:
            data = self._encoded[codec] = codec(self.message)
        return data
