"""A session: one client's identity, its rooms, and the bounded queue of events on their way
to it.

The hub only ever *offers* events to a session; the session's writer (its gRPC handler) drains
the queue. Offering never waits: when more than `capacity` live events are waiting, the session
is closed as a slow consumer, so one stuck client costs the others nothing. Its client
reconnects and resumes from the last position it saw.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable

from grpcchat.core.errors import ChatError, SlowConsumer
from grpcchat.core.models import Envelope, Message

# A writer that wrote less than BUSY_FACTOR lingers ago counts as busy and lingers before the
# next write, so a steady stream is written in batches while a quiet room stays immediate.
BUSY_FACTOR = 2


class Session:
    _ids = itertools.count(1)

    def __init__(
        self,
        name: str,
        *,
        authenticated: bool = False,
        capacity: int,
        max_batch: int,
        linger: float,
        on_close: Callable[[Session], None] = lambda _: None,
    ) -> None:
        self.id = next(self._ids)
        self.name = name
        self.authenticated = authenticated
        self.rooms: set[str] = set()
        self._capacity = capacity
        self._max_batch = max_batch
        self._linger = linger
        self._on_close = on_close
        # (envelope, counts against capacity): replayed history is bounded by retention and
        # must not evict the very client that asked for it.
        self._queue: deque[tuple[Envelope, bool]] = deque()
        self._live_waiting = 0
        # Rooms being joined: live events wait here until the replay is queued.
        self._replaying: dict[str, list[Envelope]] = {}
        self._ready = asyncio.Event()
        self.closed = asyncio.Event()
        self.error: ChatError | None = None

    def __repr__(self) -> str:
        return f"Session({self.id}, {self.name!r}, rooms={sorted(self.rooms)})"

    def offer(self, envelope: Envelope, room: str | None = None) -> None:
        """Queue a live event (of `room`, if it belongs to one) without waiting."""
        if self.closed.is_set():
            return
        pending = self._replaying.get(room) if room is not None else None
        if pending is not None:
            pending.append(envelope)
            if len(pending) > self._capacity:
                self._evict()
            return
        if self._live_waiting >= self._capacity:
            self._evict()
            return
        self._queue.append((envelope, True))
        self._live_waiting += 1
        self._ready.set()

    def _evict(self) -> None:
        self.close(
            SlowConsumer(
                f"slow consumer: more than {self._capacity} events waiting to be read; "
                "reconnect and resume to continue"
            )
        )

    def begin_replay(self, room: str) -> None:
        """From now on, hold the room's live events back until `finish_replay`."""
        self._replaying[room] = []

    def finish_replay(
        self, room: str, replayed: Iterable[Envelope], last_replayed_seq: int, done: Envelope
    ) -> None:
        """Queue the replay, then `done`, then the live events that arrived meanwhile, minus
        the messages the replay already held (subscribe first, read history, then drop what
        was replayed: no gap, no duplicate)."""
        pending = self._replaying.pop(room, [])
        if self.closed.is_set():
            return
        for envelope in replayed:
            self._queue.append((envelope, False))
        self._queue.append((done, False))
        self._ready.set()
        for envelope in pending:
            event = envelope.event
            if isinstance(event, Message) and event.seq and event.seq <= last_replayed_seq:
                continue
            self.offer(envelope, room)

    def close(self, error: ChatError | None = None) -> None:
        """End the session. A slow consumer's backlog is dropped at once (its client resumes
        from its last position); otherwise the writer first flushes what is queued."""
        if self.closed.is_set():
            return
        self.error = error
        if isinstance(error, SlowConsumer):
            self._queue.clear()
            self._replaying.clear()
        self.closed.set()
        self._ready.set()
        self._on_close(self)

    async def batches(self) -> AsyncIterator[list[Envelope]]:
        """Yield queued envelopes in order, several at a time under load.

        When idle, an event is written as soon as it arrives. When the previous write was only
        moments ago (a steady stream, or a backlog), the writer lingers briefly so the next write
        carries a full batch: fewer, larger writes are what lets one process fan out far more
        deliveries a second than one write per event allows. Raises the closing error once the
        queue is empty.
        """
        loop = asyncio.get_running_loop()
        last_write = -1e9
        while True:
            if not self._queue:
                if self.closed.is_set():
                    if self.error is not None:
                        raise self.error
                    return
                self._ready.clear()
                await self._ready.wait()
                continue
            # Busy: more was waiting after the last write, or this event came soon after it.
            busy = loop.time() - last_write < self._linger * BUSY_FACTOR
            if busy and not self.closed.is_set():
                await asyncio.sleep(self._linger)
            batch = []
            for _ in range(min(len(self._queue), self._max_batch)):
                envelope, live = self._queue.popleft()
                self._live_waiting -= live
                batch.append(envelope)
            yield batch
            last_write = loop.time()
