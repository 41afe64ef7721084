"""The hub's delivery of room messages when other processes append to the same history (a store
that is a `RoomFeed`): every room with members here has a `Gate`, and both this process's own
appends and the feed's (which brings this process's own too) pass through it, so each is
delivered once, in seq order; a gap the feed does not fill soon is read from history."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from grpcchat.core.errors import StoreError
from grpcchat.core.feed import Gate
from grpcchat.core.history import HistoryStore
from grpcchat.core.models import Envelope, Message

# How long a gap before a held message may wait for the feed before it is read from history,
# how many messages one such read asks for, and how long it waits after a failed read.
GAP_WAIT = 0.05
GAP_PAGE = 100
GAP_RETRY = 1.0


class GatedDelivery:
    """`fan_out(room, envelope)` delivers to the room's members here; `before_message(room)`
    runs before a message from the feed is delivered (the presence notices it must follow)."""

    def __init__(
        self,
        store: HistoryStore,
        fan_out: Callable[[str, Envelope], None],
        before_message: Callable[[str], None],
    ) -> None:
        self._store = store
        self._fan_out = fan_out
        self._before_message = before_message
        self._gates: dict[str, Gate] = {}
        self._gap_fills: set[asyncio.Task[None]] = set()

    def open(self, room: str) -> None:
        """The room has members here now."""
        self._gates[room] = Gate()

    def close(self, room: str) -> None:
        """The room has no members here any more."""
        self._gates.pop(room, None)

    def start(self, room: str, next_seq: int) -> int:
        """A join read history up to `next_seq - 1`: live delivery starts there, unless it
        started already. Returns the last seq delivered (what the joiner replays up to)."""
        gate = self._gates[room]
        self._deliver_due(room, gate.start(next_seq))
        return gate.next_seq - 1

    def receive(self, message: Message, accepted_at: float = 0.0) -> None:
        """A room message from the feed: delivered unless it was already (or nobody here is in
        its room); `accepted_at` as for an `Envelope`."""
        gate = self._gates.get(message.room)
        if gate is None or message.seq < gate.next_seq:
            return
        self._before_message(message.room)
        self.deliver(message.room, Envelope(message, accepted_at))

    def deliver(self, room: str, envelope: Envelope) -> None:
        gate = self._gates.get(room)
        if gate is None:
            return
        self._deliver_due(room, gate.offer(envelope))
        if gate.gap is not None and not gate.filling:
            gate.filling = True
            task = asyncio.get_running_loop().create_task(self._fill_gap(room, gate))
            self._gap_fills.add(task)
            task.add_done_callback(self._gap_fills.discard)

    def cancel(self) -> None:
        for task in self._gap_fills:
            task.cancel()

    def _deliver_due(self, room: str, due: list[Envelope]) -> None:
        for envelope in due:
            self._fan_out(room, envelope)

    async def _fill_gap(self, room: str, gate: Gate) -> None:
        """Read the messages missing before the gate's earliest held one from history, unless
        the feed brings them first. Stops when the room has no members here any more."""
        try:
            await asyncio.sleep(GAP_WAIT)
            while self._gates.get(room) is gate:
                gap = gate.gap
                if gap is None:
                    return
                first, end = gap
                try:
                    found = await self._store.read(
                        room, after=first - 1, before=end, limit=min(end - first, GAP_PAGE)
                    )
                except StoreError:
                    await asyncio.sleep(GAP_RETRY)
                    continue
                if self._gates.get(room) is not gate:
                    return
                if not found or found[0].seq > first:
                    # Gone from history (retention): a jump the clients see, and resume over.
                    self._deliver_due(room, gate.skip_to(found[0].seq if found else end))
                for message in found:
                    self._deliver_due(room, gate.offer(Envelope(message)))
        finally:
            gate.filling = False
