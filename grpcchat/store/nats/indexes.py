"""`Indexes`: each room's `state.RoomState` in this process, kept up to date from the stream.

A room's index is built on first need from its retained entries (a run of them, see
`Reader.run`), then kept current by this process's appends (`RoomState.apply`) and by the
feed (`offer`); when it is behind the entry a caller needs, it reads on from its last entry,
or, when it has none or is too far behind, builds again from the retention window on.
"""

from __future__ import annotations

import contextlib

from grpcchat.store.nats.codec import Stored
from grpcchat.store.nats.reader import Reader
from grpcchat.store.nats.state import RoomState, RoomStates
from grpcchat.store.nats.window import Window


class Indexes:
    def __init__(self, reader: Reader, window: Window, epoch: str) -> None:
        self._reader = reader
        self._window = window
        self._states = RoomStates(epoch, window.max_messages)

    def peek(self, room: str) -> RoomState | None:
        """The room's index if it has one, as it is (maybe behind)."""
        return self._states.peek(room)

    def offer(self, stored: Stored) -> None:
        """An entry the feed delivered: applied to its room's index if it is the next one."""
        state = self._states.peek(stored.message.room)
        if state is not None:
            state.offer(stored)

    async def upto(self, room: str, upto: Stored | None) -> RoomState:
        """The room's index, brought up to the entry `upto` (the room's last, or a later one)
        at least. May raise nats-py's errors."""
        state = self._states.get(room)
        if upto is None:
            return state
        async with state.lock:
            known = state.last
            if known is not None and known.stream_seq >= upto.stream_seq:
                return state
            subject = self._reader.subject(room)
            window_start = self._window.start(upto.seq)
            if known is None or known.seq < window_start - 1:
                state.reset()
                first = await self._reader.seek(subject, window_start, upto)
                start, expected = first.stream_seq, upto.seq - first.seq + 1
            else:
                start, expected = known.stream_seq + 1, upto.seq - known.seq
            run = self._reader.run(subject, start, upto, expected)
            async with contextlib.aclosing(run) as entries:
                async for stored in entries:
                    state.apply(stored)
        return state
