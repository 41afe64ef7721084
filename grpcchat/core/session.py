"""A session: one client's identity, its rooms, and the bounded queue of events on their way
to it.

The hub only ever *offers* events to a session; the session's writer (its gRPC handler) drains
the queue. Offering never waits and never calls back into the hub: when more than `capacity`
live events are waiting, the session marks itself closed as a slow consumer and reports the
eviction through `on_evicted`, which the hub settles after the fan-out in progress. Its client
reconnects and resumes from the last position it saw, so one stuck client costs the others
nothing.

Replayed history does not sit in the queue in advance: the writer pages it in from a
`ReplayCursor` when the queue runs short, so a session's memory is bounded by its queue however
much history it asks for.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import time
from collections.abc import AsyncIterator, Callable

from grpcchat.core.errors import ChatError, SlowConsumer
from grpcchat.core.models import Envelope, Message, PresenceChange, PresenceSummary, Typing
from grpcchat.core.replay import ReplayCursor

# A writer that wrote less than BUSY_FACTOR lingers ago counts as busy and lingers before the
# next write, so a steady stream is written in batches while a quiet room stays immediate.
BUSY_FACTOR = 2


def _ignore(*_: object) -> None:
    pass


class _PendingJoin:
    """A room being joined: its replay cursor, the event that ends it, and the live events that
    arrived meanwhile (queued after the replay, minus what it already held)."""

    __slots__ = ("cursor", "done", "held", "held_live")

    def __init__(self) -> None:
        self.cursor: ReplayCursor | None = None
        self.done: Envelope | None = None
        self.held: list[Envelope] = []
        # How many of `held` count against the queue's capacity (presence notices do not).
        self.held_live = 0


class Session:
    # Slots: a session per client, 10,000s of them. As a plain instance it had a dict whose
    # keys CPython shares between instances only up to 30 attributes; at 31, each session's
    # dict became a whole dict of its own (296 -> 1,584 bytes, +1.3 KiB a member of a big room).
    __slots__ = (
        "_answer_linger",
        "_answer_waiting",
        "_beat",
        "_beat_owed",
        "_capacity",
        "_caught_up",
        "_closed_callbacks",
        "_joins",
        "_lag_high",
        "_lag_low",
        "_linger",
        "_live_waiting",
        "_max_batch",
        "_on_close",
        "_on_evicted",
        "_on_lag",
        "_paged_waiting",
        "_queue",
        "_replayed",
        "_replays",
        "_waiter",
        "_written_at",
        "authenticated",
        "closed",
        "error",
        "id",
        "lagging",
        "last_progress",
        "name",
        "peer",
        "principal",
        "rooms",
        "rooms_at_close",
    )
    _ids = itertools.count(1)

    def __init__(
        self,
        name: str,
        *,
        authenticated: bool = False,
        peer: str = "",
        capacity: int,
        max_batch: int,
        linger: float,
        answer_linger: float | None = None,
        on_close: Callable[[Session], None] = _ignore,
        on_evicted: Callable[[Session], None] = _ignore,
        on_lag: Callable[[Session], None] = _ignore,
    ) -> None:
        self.id = next(self._ids)
        self.name = name
        self.authenticated = authenticated
        self.peer = peer
        # Whom per-client limits count against: the authenticated user, else the address.
        self.principal = name if authenticated or not peer else peer
        self.rooms: set[str] = set()
        self._capacity = capacity
        # Lagging: more than half the queue is waiting; caught up again below a quarter.
        self._lag_high = max(1, capacity // 2)
        self._lag_low = capacity // 4
        self.lagging = False
        # What `until_caught_up` waits on, made only while something waits.
        self._caught_up: asyncio.Future[None] | None = None
        self._max_batch = max_batch
        self._linger = linger
        # The linger while an answer to the client's own request waits (see `answer`).
        self._answer_linger = linger if answer_linger is None else min(answer_linger, linger)
        self._answer_waiting = False
        self._on_close = on_close
        self._on_evicted = on_evicted
        self._on_lag = on_lag
        # The events waiting, in order, and how many of them count against capacity (live) or
        # not (`Envelope.paged`: replayed history and the events that end a join are bounded by
        # the cursor's paging and must not evict the client asking for them). Bare envelopes,
        # so a batch is a slice of the queue: every event reaches every member of its room, and
        # a pair per event per session, built and taken apart again, was ~8% of the unpaced
        # bench's server CPU. A list, not a deque: an empty list holds no buffer, a deque
        # always a 64-slot block (~0.6 KiB a session). The writer usually takes all of it, so
        # taking from the front moves nothing.
        self._queue: list[Envelope] = []
        self._live_waiting = 0
        self._paged_waiting = 0
        self._joins: dict[str, _PendingJoin] = {}
        # Joins whose replay is ready to page in, in the order they were asked for.
        self._replays: list[str] = []
        # Per room whose join has finished: the last seq its replay covered. A message stored
        # by then may still be on its way through the room's delivery line (behind a post whose
        # store answers late or fails late), and `offer` drops it. Forgotten at the room's
        # first newer message: the line delivers in seq order.
        self._replayed: dict[str, int] = {}
        # What the idle writer awaits; made only while it waits (an idle session is cheap).
        self._waiter: asyncio.Future[None] | None = None
        # The heartbeat (see `batches`): when the stream last carried anything, the one timer
        # that may be armed, and whether it found the stream quiet for a whole heartbeat.
        self._written_at = 0.0
        self._beat: asyncio.TimerHandle | None = None
        self._beat_owed = False
        # A flag, not an asyncio.Event: nothing awaits it, and an Event's waiter deque is
        # ~0.7 KiB per session.
        self.closed = False
        self._closed_callbacks: list[Callable[[], None]] = []
        self.error: ChatError | None = None
        # Rooms at the moment the session closed (the hub empties `rooms` as it forgets it).
        self.rooms_at_close: tuple[str, ...] = ()
        # When the writer last finished a write (or the session began): a lagging session
        # whose writer has not progressed for long is stuck, not slow.
        self.last_progress = time.monotonic()

    def __repr__(self) -> str:
        return f"Session({self.id}, {self.name!r}, rooms={sorted(self.rooms)})"

    @property
    def queued(self) -> int:
        """Live events waiting to be written."""
        return self._live_waiting

    def offer(self, envelope: Envelope, room: str | None = None) -> None:
        """Queue a live event (of `room`, if it belongs to one) without waiting."""
        if self.closed:
            return
        if self._replayed and room in self._replayed:
            event = envelope.event
            if isinstance(event, Message) and event.seq:
                if event.seq <= self._replayed[room]:
                    return  # replayed already
                del self._replayed[room]
        pending = self._joins.get(room) if room is not None else None
        if pending is not None:
            pending.held.append(envelope)
            pending.held_live += 1
            if pending.held_live > self._capacity:
                self._evict()
            return
        if self._live_waiting >= self._capacity:
            self._evict()
            return
        self._queue.append(envelope)
        self._live_waiting += 1
        if not self.lagging and self._live_waiting > self._lag_high:
            self.lagging = True
            # The stall clock starts now: a reader of a quiet room wrote last long ago, and
            # one burst must not make it look stuck.
            self.last_progress = time.monotonic()
            self._on_lag(self)
        self._wake()

    def answer(self, envelope: Envelope) -> None:
        """Queue the answer to one of this client's own requests (its SendAck): a busy writer
        then waits only the shorter answer linger, because a client with a window of sends in
        flight waits on their answers to send more."""
        self.offer(envelope)
        if not self.closed:
            self._answer_waiting = True

    def offer_optional(self, envelope: Envelope, room: str) -> None:
        """Queue an event of `room` that may be dropped but never evicts (presence and typing
        notices). It may only use the first half of the queue, so notices never crowd out the
        messages that follow them; a session that lags gets the room's members afresh on its
        next join. While the room is being joined, it waits behind the join's RoomJoined like
        any event."""
        if self.closed:
            return
        pending = self._joins.get(room)
        if pending is not None:
            if len(pending.held) < self._lag_high:
                pending.held.append(envelope)
            return
        if self._live_waiting < self._lag_high:
            self._queue.append(envelope)
            self._live_waiting += 1
            self._wake()

    def _evict(self) -> None:
        self._end(
            SlowConsumer(
                f"slow consumer: more than {self._capacity} events waiting to be read; "
                "reconnect and resume to continue"
            )
        )
        self._on_evicted(self)

    def evict_stalled(self, seconds: float) -> None:
        """Cut off a lagging session whose writer made no progress for `seconds`."""
        if not self.closed:
            self._end(
                SlowConsumer(
                    f"slow consumer: nothing was read for {seconds:.0f}s; "
                    "reconnect and resume to continue"
                )
            )
            self._on_evicted(self)

    # -- joins ------------------------------------------------------------------------------

    def begin_join(self, room: str) -> None:
        """From now on, hold the room's live events back until its replay is written."""
        self._replayed.pop(room, None)
        self._joins[room] = _PendingJoin()

    def cancel_join(self, room: str) -> None:
        """The session leaves `room`. A join of it not yet answered is answered now: its
        RoomJoined goes out without the rest of its replay or what it held, so the RoomLeft
        that follows answers the leave, and the join does not go unanswered."""
        pending = self._joins.pop(room, None)
        self._replayed.pop(room, None)
        if pending is not None and pending.done is not None and not self.closed:
            self._queue_paged([pending.done])
            self._wake()

    def start_replay(self, room: str, cursor: ReplayCursor, done: Envelope) -> None:
        """Page `cursor` in as the writer drains, then queue `done`, then the live events held
        meanwhile minus those the replay already held (subscribe first, read history, then drop
        what was replayed: no gap, no duplicate)."""
        pending = self._joins.get(room)
        if pending is None or self.closed:
            return
        pending.cursor, pending.done = cursor, done
        self._replays.append(room)
        self._wake()

    async def _page_in(self) -> None:
        room = self._replays[0]
        pending = self._joins.get(room)
        cursor = pending.cursor if pending is not None else None
        if pending is None or cursor is None:
            self._replays.pop(0)
            return
        page = await cursor.next_page(self._max_batch)
        if self.closed or self._joins.get(room) is not pending:
            return
        self._queue_paged(page)
        if not cursor.exhausted:
            return
        self._replays.pop(0)
        del self._joins[room]
        if pending.done is not None:
            self._queue_paged([pending.done])
        # `offer` drops what the replay covered, held here or still on its way.
        self._replayed[room] = max(cursor.until, cursor.last_replayed)
        for envelope in pending.held:
            if isinstance(envelope.event, PresenceChange | PresenceSummary | Typing):
                self.offer_optional(envelope, room)
            else:
                self.offer(envelope, room)

    def _queue_paged(self, envelopes: list[Envelope]) -> None:
        for envelope in envelopes:
            envelope.paged = True  # made for this session's replay alone
        self._queue += envelopes
        self._paged_waiting += len(envelopes)

    # -- ending -----------------------------------------------------------------------------

    def _end(self, error: ChatError | None) -> None:
        self.error = error
        self.rooms_at_close = tuple(sorted(self.rooms))
        if isinstance(error, SlowConsumer):
            self._queue.clear()
            self._live_waiting = self._paged_waiting = 0
        self._joins.clear()
        self._replays.clear()
        self.closed = True
        self._wake()
        self._settle_caught_up()
        callbacks, self._closed_callbacks = self._closed_callbacks, []
        for callback in callbacks:
            callback()

    async def until_caught_up(self) -> None:
        """Wait while the session is lagging (more than half its queue waiting to be written),
        until its writer has caught up or the session has ended. Its own requests are read
        only then: a client that posts faster than it reads the answers is held back by flow
        control instead of being cut off as a slow consumer for the answers piling up."""
        if not self.lagging or self.closed:
            return
        if self._caught_up is None:
            self._caught_up = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._caught_up)

    def _settle_caught_up(self) -> None:
        if self._caught_up is not None:
            if not self._caught_up.done():
                self._caught_up.set_result(None)
            self._caught_up = None

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def on_closed(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call `callback` once the session has ended (at once if it has). Returns what takes
        it back: a writer that ends before its session needs no call."""
        if self.closed:
            callback()
            return _nothing
        self._closed_callbacks.append(callback)
        return functools.partial(self._forget_closed, callback)

    def _forget_closed(self, callback: Callable[[], None]) -> None:
        if callback in self._closed_callbacks:
            self._closed_callbacks.remove(callback)

    def close(self, error: ChatError | None = None) -> None:
        """End the session. A slow consumer's backlog is dropped at once (its client resumes
        from its last position); otherwise the writer first flushes what is queued (but not
        replays still to page in: the client resumes them)."""
        if self.closed:
            return
        self._end(error)
        self._on_close(self)

    async def batches(self, heartbeat: float = 0) -> AsyncIterator[list[Envelope]]:
        """Yield queued envelopes in order, several at a time under load.

        When idle, an event is written as soon as it arrives. When the previous write was only
        moments ago (a steady stream, or a backlog), writes are spaced a linger apart, so the
        next one carries a full batch: fewer, larger writes are what lets one process fan out
        far more deliveries a second than one write per event allows. The wait is what is left
        of a linger since the last write, not a whole linger after the event (a 1,000 msg/s
        room of 200: p99 29 -> 23 ms, the same unpaced throughput); while an answer to the
        client's own request waits (`answer`), only the shorter answer linger. Raises the
        closing error once the queue is empty.

        With a `heartbeat` (seconds), a stream that carried nothing for that long yields an
        empty batch, which its writer sends as an empty response: a proxy that closes idle
        connections (AWS ALB after 60 s; it ignores HTTP/2 pings) sees traffic. It costs one
        timer per session at most, armed only when the writer goes idle and re-armed at most
        once a heartbeat on a stream that keeps writing, never one per write.
        """
        loop = asyncio.get_running_loop()
        last_write = -1e9
        self._written_at = loop.time()
        try:
            while True:
                if self._replays and len(self._queue) < self._max_batch:
                    await self._page_in()
                    continue
                if not self._queue:
                    if self.closed:
                        if self.error is not None:
                            raise self.error
                        return
                    if heartbeat > 0 and self._beat is None:
                        self._arm_beat(loop, heartbeat)
                    self._waiter = loop.create_future()
                    try:
                        await self._waiter
                    finally:
                        self._waiter = None
                    if self._beat_owed and not self._queue and not self.closed:
                        self._beat_owed = False
                        yield []
                        self._written_at = loop.time()
                    continue
                # Busy: more was waiting after the last write, or this event came soon after it.
                # Then writes are spaced a linger apart: the wait is what is left of one.
                since_write = loop.time() - last_write
                busy = since_write < self._linger * BUSY_FACTOR
                linger = self._answer_linger if self._answer_waiting else self._linger
                if busy and since_write < linger and not self.closed:
                    await asyncio.sleep(linger - since_write)
                    if not self._queue:  # cut off meanwhile, its backlog dropped: no empty write
                        continue
                taken = self._queue[: self._max_batch]
                del self._queue[: self._max_batch]
                self._answer_waiting = self._answer_waiting and bool(self._queue)
                if self._paged_waiting:  # a join's replay is under way
                    paged = sum(envelope.paged for envelope in taken)
                    self._paged_waiting -= paged
                    self._live_waiting -= len(taken) - paged
                else:
                    self._live_waiting -= len(taken)
                yield taken
                last_write = self._written_at = loop.time()
                self._beat_owed = False
                self.last_progress = time.monotonic()
                if self.lagging and self._live_waiting <= self._lag_low:
                    self.lagging = False
                    self._settle_caught_up()
                    self._on_lag(self)
        finally:
            if self._beat is not None:
                self._beat.cancel()
                self._beat = None

    def _arm_beat(self, loop: asyncio.AbstractEventLoop, heartbeat: float) -> None:
        self._beat = loop.call_at(self._written_at + heartbeat, self._on_beat, loop, heartbeat)

    def _on_beat(self, loop: asyncio.AbstractEventLoop, heartbeat: float) -> None:
        """The heartbeat timer: owe an empty batch if the idle stream carried nothing for a
        whole heartbeat; if it wrote meanwhile, wait for the rest of the heartbeat since its
        last write. A writer busy writing (not waiting) re-arms when it next goes idle."""
        self._beat = None
        if self._waiter is None:
            return
        # Timers may fire up to the clock's resolution early: allow for it.
        if loop.time() - self._written_at >= heartbeat * 0.99:
            self._beat_owed = True
            self._wake()
        else:
            self._arm_beat(loop, heartbeat)


def _nothing() -> None:
    pass
