"""Live room messages across processes: the `RoomFeed` an engine may offer (the design's
Broker), and the per-room `Gate` through which the hub delivers a room's messages in seq order,
each once, whichever process appended them.

A store shared by several processes (NATS) offers `follow`; the single-process engines (memory,
SQLite) do not, and the hub then delivers its own appends directly, as it always has.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol, runtime_checkable

from grpcchat.core.models import Envelope, Message


@runtime_checkable
class RoomFeed(Protocol):
    """Every room message appended by any process sharing the history, live."""

    async def follow(
        self,
        deliver: Callable[[Message], None],
        following: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """Call `deliver` for every room message appended from now on by any process (this one
        included), in seq order per room, until the store closes (then return); `following`
        is awaited once nothing appended from then on can be missed. Raises StoreError when
        the feed breaks (its engine's connection lost, too); called again, it continues where
        it stopped, so a retry loses nothing the engine still holds."""
        ...


@runtime_checkable
class Connected(Protocol):
    """An engine with a connection of its own (NATS), which may be down while the server runs."""

    @property
    def connected(self) -> bool: ...


class Gate:
    """One room's delivery in seq order: deliver the next seq, drop what was delivered, hold
    what comes early until the gap before it is filled (by the feed, or from history).

    `next_seq` is 0 until the room's first join has read where live delivery starts; until
    then everything is held (the joining sessions hold live events anyway)."""

    __slots__ = ("filling", "held", "next_seq")

    def __init__(self) -> None:
        self.next_seq = 0
        self.held: dict[int, Envelope] = {}
        self.filling = False

    def start(self, next_seq: int) -> list[Envelope]:
        """Live delivery starts at `next_seq` (if it had not started): what is due now."""
        if self.next_seq:
            return []
        self.next_seq = next_seq
        self.held = {seq: e for seq, e in self.held.items() if seq >= next_seq}
        return self._due()

    def offer(self, envelope: Envelope) -> list[Envelope]:
        """The room message `envelope` arrived (again, perhaps): what is due now, in order."""
        assert isinstance(envelope.event, Message)
        seq = envelope.event.seq
        if seq < self.next_seq or seq in self.held:
            return []  # delivered already (or held already): once is enough
        self.held[seq] = envelope
        return self._due() if self.next_seq else []

    def skip_to(self, seq: int) -> list[Envelope]:
        """The seqs before `seq` will never come (gone from history): what is due now."""
        if self.next_seq < seq:
            self.next_seq = seq
            self.held = {s: e for s, e in self.held.items() if s >= seq}
        return self._due()

    @property
    def gap(self) -> tuple[int, int] | None:
        """The seqs missing before the earliest held message (`first <= seq < end`), if any."""
        if not self.next_seq or not self.held:
            return None
        return self.next_seq, min(self.held)

    def _due(self) -> list[Envelope]:
        due: list[Envelope] = []
        while self.next_seq in self.held:
            due.append(self.held.pop(self.next_seq))
            self.next_seq += 1
        return due
