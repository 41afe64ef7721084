"""Rooms, subscriptions and fan-out.

The hub is the only place messages are numbered and delivered. Its one rule: a publisher never
waits on a subscriber. Every subscription owns a bounded queue that the hub only appends to; a
writer (one per subscription, run by the transport) drains it. A subscription whose queue
overflows is closed as a slow consumer, so one stuck client costs the others nothing. (The
article's broadcast-under-a-mutex lets one stuck client freeze the whole room.)
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime

from grpcchat.errors import ChatError, ServerDraining, SlowConsumer
from grpcchat.models import Envelope, Message
from grpcchat.validation import check_name, check_room, check_text


class Subscription:
    """One subscriber's view of one room: a bounded queue the hub fills and a writer drains."""

    _ids = itertools.count(1)

    def __init__(
        self,
        room: str,
        name: str,
        capacity: int,
        max_batch: int,
        linger: float,
        on_close: Callable[[Subscription], None] = lambda _: None,
    ):
        self.id = next(self._ids)
        self._on_close = on_close
        self.room = room
        self.name = name
        self._capacity = capacity
        self._max_batch = max_batch
        self._linger = linger
        self._queue: deque[Envelope] = deque()
        self._ready = asyncio.Event()
        self.closed = asyncio.Event()
        self.error: ChatError | None = None

    def offer(self, envelope: Envelope) -> None:
        """Queue an envelope without waiting; close the subscription if it is full."""
        if self.closed.is_set():
            return
        if len(self._queue) >= self._capacity:
            self.close(
                SlowConsumer(
                    f"slow consumer: more than {self._capacity} messages waiting to be read; "
                    "reconnect to continue"
                )
            )
            return
        self._queue.append(envelope)
        self._ready.set()

    def close(self, error: ChatError | None = None) -> None:
        """End the subscription. A slow consumer's backlog is dropped at once (its client resumes
        from its last position); on a drain the writer first flushes what is queued."""
        if self.closed.is_set():
            return
        self.error = error
        if isinstance(error, SlowConsumer):
            self._queue.clear()
        self.closed.set()
        self._ready.set()
        self._on_close(self)

    @property
    def backlog(self) -> int:
        return len(self._queue)

    async def batches(self) -> AsyncIterator[list[Envelope]]:
        """Yield queued envelopes in order, several at a time under load.

        When idle, a message is written as soon as it arrives. When the previous write finished
        with more already waiting, the writer lingers briefly so the next write carries a full
        batch: fewer, larger writes are what lets one process fan out hundreds of thousands of
        deliveries a second. Raises the closing error once the queue is empty.
        """
        lingering = False
        while True:
            if not self._queue:
                if self.closed.is_set():
                    if self.error is not None:
                        raise self.error
                    return
                self._ready.clear()
                await self._ready.wait()
                continue
            if lingering and not self.closed.is_set():
                await asyncio.sleep(self._linger)
            count = min(len(self._queue), self._max_batch)
            batch = [self._queue.popleft() for _ in range(count)]
            yield batch
            lingering = bool(self._queue)


class Hub:
    """All rooms of one server process."""

    def __init__(self, queue_size: int = 1024, max_batch: int = 512, linger: float = 0.003):
        self._queue_size = queue_size
        self._max_batch = max_batch
        self._linger = linger
        self._rooms: defaultdict[str, dict[int, Subscription]] = defaultdict(dict)
        self._sequences: defaultdict[str, int] = defaultdict(int)
        self._draining = False

    async def post(self, sender: str, text: str, room: str = "") -> Message:
        """Validate, number, stamp and deliver one message; return it as accepted."""
        if self._draining:
            raise ServerDraining("server is shutting down; try again shortly")
        room = check_room(room)
        message = Message(
            id=uuid.uuid4().hex,
            room=room,
            sender=check_name(sender),
            text=check_text(text),
            sent_at=datetime.now(UTC),
            seq=self._next_seq(room),
        )
        envelope = Envelope(message)
        for subscription in list(self._rooms.get(room, {}).values()):
            subscription.offer(envelope)
        return message

    def _next_seq(self, room: str) -> int:
        self._sequences[room] += 1
        return self._sequences[room]

    @asynccontextmanager
    async def subscribe(self, room: str = "", name: str = "") -> AsyncIterator[Subscription]:
        """Follow a room for the duration of the block; messages posted after entry are queued."""
        if self._draining:
            raise ServerDraining("server is shutting down; try again shortly")
        room = check_room(room)
        subscription = Subscription(
            room, name, self._queue_size, self._max_batch, self._linger, self._forget
        )
        self._rooms[room][subscription.id] = subscription
        try:
            yield subscription
        finally:
            subscription.close()

    def _forget(self, subscription: Subscription) -> None:
        """Stop delivering to a closed subscription at once, even while its writer is stuck."""
        members = self._rooms.get(subscription.room)
        if members is not None:
            members.pop(subscription.id, None)
            if not members:
                del self._rooms[subscription.room]

    def drain(self) -> None:
        """Refuse new work and ask every subscription to flush and end (UNAVAILABLE)."""
        self._draining = True
        for members in list(self._rooms.values()):
            for subscription in list(members.values()):
                subscription.close(ServerDraining("server is shutting down; reconnect shortly"))

    def subscriber_count(self, room: str = "") -> int:
        return len(self._rooms.get(check_room(room), {}))
