"""Join and leave notices, batched per room per tick.

A notice is never sent while the join or leave happens: it waits for the room's tick, so a
burst (a room forming, a reconnect storm) is written in a few batches instead of one write per
change per member. In a room of at most `detail_limit` names every change is told, in order; in
a bigger one a tick's changes become one `PresenceSummary` (net counts: a leave and a rejoin
within the tick cancel out), so the cost stays linear in the room's size. Notices are offered
with `Session.offer_optional`: they never evict anyone.

The tick grows with the room (`tick_for`), so the cost of notices stays proportional to the
time a room takes to form, not to the square of its size.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime

from grpcchat.core.models import Envelope, PresenceChange, PresenceSummary
from grpcchat.core.rooms import Room

BASE_TICK = 0.02
# Seconds added to a room's tick per member: rooms of 10,000 and more tick every 3 s (each tick
# is one write to every member, the cost that dominates a big room forming).
TICK_PER_MEMBER = 0.0003
MAX_TICK = 3.0
DETAIL_LIMIT = 100


def tick_for(members: int) -> float:
    return min(MAX_TICK, BASE_TICK + members * TICK_PER_MEMBER)


class PresenceNotices:
    def __init__(
        self,
        room_of: Callable[[str], Room | None],
        count_of: Callable[[str], int] | None = None,
        detail_limit: int = DETAIL_LIMIT,
    ) -> None:
        self._room_of = room_of
        # Distinct names in a room: this node's by default, every node's across several.
        self._count_of = count_of or self._local_count
        self._detail_limit = detail_limit
        # room -> the (name, joined) changes since the room's last tick, in order.
        self._pending: dict[str, list[tuple[str, bool]]] = {}
        # room -> session id -> how many of the room's pending changes its RoomJoined reflects.
        self._arrived: dict[str, dict[int, int]] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}

    def changed(self, room: str, name: str, joined: bool) -> None:
        self._pending.setdefault(room, []).append((name, joined))
        if room not in self._timers:
            delay = tick_for(self._count_of(room))
            loop = asyncio.get_running_loop()
            self._timers[room] = loop.call_later(delay, self.flush, room)

    def arrived(self, room: str, session_id: int) -> None:
        """A session joins `room` with the members as they are now: the changes pending now
        are in its RoomJoined, so only the later ones are told to it."""
        pending = self._pending.get(room)
        if pending:
            self._arrived.setdefault(room, {})[session_id] = len(pending)

    def flush(self, room: str) -> None:
        """Send the room's pending notices now (before a message, so a join is announced
        before what the newcomer says)."""
        timer = self._timers.pop(room, None)
        if timer is not None:
            timer.cancel()
        changes = self._pending.pop(room, None)
        arrived = self._arrived.pop(room, {})
        members = self._room_of(room)
        if not changes or members is None or not members.sessions:
            return
        now = datetime.now(UTC)
        # Counts when the room is big, or when this tick changed it a lot (a mass eviction, a
        # reconnect storm): one event per member either way, never one per change.
        total = self._count_of(room)
        if max(total, len(changes)) > self._detail_limit:
            net: dict[str, int] = {}
            for name, entered in changes:
                net[name] = net.get(name, 0) + (1 if entered else -1)
            joined = sum(1 for n in net.values() if n > 0)
            left = sum(1 for n in net.values() if n < 0)
            envelope = Envelope(PresenceSummary(room, joined, left, total, now))
            for session in members.sessions.values():
                session.offer_optional(envelope, room)
            return
        notices = [
            (name, Envelope(PresenceChange(room, name, entered, now))) for name, entered in changes
        ]
        for session in members.sessions.values():
            for name, envelope in notices[arrived.get(session.id, 0) :]:
                # Nobody is told of their own arrival: their RoomJoined lists the room.
                if session.name != name:
                    session.offer_optional(envelope, room)

    def _local_count(self, room: str) -> int:
        members = self._room_of(room)
        return members.member_count if members is not None else 0

    def close(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        self._pending.clear()
        self._arrived.clear()
