"""The hub under overload, without gRPC: cascades of slow consumers, bounded replays, resumes,
coalesced presence, no ghost sessions, pushback and per-client limits.

A "reader" is a task iterating `session.batches()`; a "never-reading" session is one nobody
iterates. Every wait is bounded and waits for a marker, never for silence.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from typing import Any

import pytest

from grpcchat.core import listing, pressure
from grpcchat.core.errors import (
    AlreadyJoined,
    ChatError,
    InvalidInput,
    LimitExceeded,
    SlowConsumer,
    StoreError,
)
from grpcchat.core.history import Appended, Retention
from grpcchat.core.hub import BUSY_RETRY, MAX_HISTORY_PAGE_BYTES, Hub
from grpcchat.core.limits import Limits
from grpcchat.core.models import (
    Event,
    HistoryGap,
    Message,
    Position,
    PresenceChange,
    PresenceSummary,
    Relation,
    RelationKind,
    RoomJoined,
    RoomLeft,
)
from grpcchat.core.presence import DETAIL_LIMIT
from grpcchat.core.pressure import STALL_TIMEOUT
from grpcchat.core.ratelimit import RateLimiter
from grpcchat.core.replay import MAX_REPLAY_PAGE_BYTES, MIN_ENTRIES_SCANNED, ReplayCursor
from grpcchat.core.session import Session
from grpcchat.store.memory import MemoryStore

TIMEOUT = 10.0


# -- helpers ------------------------------------------------------------------------------


def make_limits(**overrides: float) -> Limits:
    """Limits with rate limits off unless a test sets them."""
    values: dict[str, float] = {"rate": 0, "request_rate": 0}
    values.update(overrides)
    return Limits(**values)  # type: ignore[arg-type]


def make_hub(store: MemoryStore | None = None, **limits: float) -> Hub:
    return Hub(store or MemoryStore(Retention()), make_limits(**limits))


async def fill(store: MemoryStore, room: str, count: int) -> None:
    now = datetime.now(UTC)
    for i in range(count):
        await store.append(
            id=uuid.uuid4().hex, room=room, sender="old", text=f"h{i + 1}", sent_at=now
        )


def seqs(events: list[Event], room: str | None = None) -> list[int]:
    return [e.seq for e in events if isinstance(e, Message) and room in (None, e.room)]


def texts(events: list[Event]) -> list[str]:
    return [e.text for e in events if isinstance(e, Message)]


class Reader:
    """Collects a session's events: one batch at a time (`step`) or in a task (`start`)."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.events: list[Event] = []
        self.writes: list[list[Event]] = []
        self.error: BaseException | None = None
        self.finished = False
        self._batches = session.batches()
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.gate: asyncio.Event | None = None  # when set, waited for before each batch

    def _record(self, batch: list[Event]) -> None:
        self.writes.append(batch)
        self.events.extend(batch)
        self._changed.set()

    async def step(self) -> list[Event]:
        batch = [e.event for e in await asyncio.wait_for(anext(self._batches), TIMEOUT)]
        self._record(batch)
        return batch

    def start(self) -> Reader:
        self._task = asyncio.create_task(self._run())
        return self

    async def _run(self) -> None:
        try:
            while True:
                if self.gate is not None:
                    await self.gate.wait()
                try:
                    envelopes = await anext(self._batches)
                except StopAsyncIteration:
                    return
                self._record([e.event for e in envelopes])
        except ChatError as error:
            self.error = error
        finally:
            self.finished = True
            self._changed.set()

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = TIMEOUT) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                if self.finished:
                    raise AssertionError(f"reader ended early: {self.error!r}")
                self._changed.clear()
                await self._changed.wait()

    async def wait_for_text(self, text: str, timeout: float = TIMEOUT) -> None:
        await self.wait_for(lambda: text in texts(self.events), timeout)

    async def wait_joined(self, room: str) -> None:
        await self.wait_for(
            lambda: any(isinstance(e, RoomJoined) and e.room == room for e in self.events)
        )

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(ChatError, RuntimeError):
            await self._batches.aclose()


@pytest.fixture
async def readers() -> AsyncIterator[Callable[..., Reader]]:
    made: list[Reader] = []

    def make(session: Session, *, start: bool = True) -> Reader:
        reader = Reader(session)
        made.append(reader)
        return reader.start() if start else reader

    yield make
    for reader in made:
        await reader.stop()


async def post_paced(hub: Hub, room: str, texts_: list[str], followers: list[Reader]) -> None:
    """Post each text and wait until every follower has it (readers that keep up)."""
    for text in texts_:
        await hub.post("poster", text, room=room)
        for follower in followers:
            await follower.wait_for_text(text)


class CountingStore(MemoryStore):
    """Records every `read`: its limit, and what `probe` says at that moment."""

    def __init__(self) -> None:
        super().__init__(Retention())
        self.reads: list[int] = []
        self.probed: list[int] = []
        self.probe: Callable[[], int] | None = None

    async def read(
        self,
        room: str,
        *,
        after: int | None = None,
        before: int | None = None,
        limit: int = 100,
        newest_first: bool = False,
    ) -> list:  # type: ignore[type-arg]
        self.reads.append(limit)
        if self.probe is not None:
            self.probed.append(self.probe())
        return await super().read(
            room, after=after, before=before, limit=limit, newest_first=newest_first
        )


class FlakyStore(MemoryStore):
    """`last_seq` fails for rooms in `fail`, and waits for `gates[room]` first if there is one
    (`entered[room]` is set once a join is waiting there)."""

    def __init__(self, retention: Retention | None = None) -> None:
        super().__init__(retention or Retention())
        self.fail: set[str] = set()
        self.gates: dict[str, asyncio.Event] = {}
        self.entered: dict[str, asyncio.Event] = {}

    def gate(self, room: str) -> asyncio.Event:
        self.entered[room] = asyncio.Event()
        gate = self.gates[room] = asyncio.Event()
        return gate

    async def last_seq(self, room: str) -> int:
        gate = self.gates.get(room)
        if gate is not None:
            self.entered[room].set()
            await gate.wait()
        if room in self.fail:
            raise StoreError(f"the store cannot read #{room}")
        return await super().last_seq(room)


# -- 1. the cascade -------------------------------------------------------------------------


async def test_the_cascade_with_1000_full_members_settles_in_one_fan_out() -> None:
    hub = make_hub(queue_size=4)
    async with AsyncExitStack() as stack:
        sessions = []
        for i in range(1000):
            session = await stack.enter_async_context(hub.connect(f"user{i}", peer="10.0.0.1:1"))
            await hub.join(session, "crowd")
            sessions.append(session)
        assert hub.session_count("crowd") == 1000
        for n in range(4):  # exactly full: nobody overflows yet
            await hub.post("poster", f"m{n}", room="crowd")
        assert not any(s.closed for s in sessions)
        assert hub.registered_sessions == 1000

        appended = await hub.post("poster", "overflow", room="crowd")  # no RecursionError

        assert appended.message.seq == 5
        assert not appended.duplicate
        assert all(isinstance(s.error, SlowConsumer) for s in sessions)
        assert all(s.closed and not s.rooms for s in sessions)
        assert hub.session_count("crowd") == 0  # settled right after the fan-out
        await asyncio.sleep(0)  # the call_soon settle finds nothing left to do
        assert hub.session_count("crowd") == 0
        assert hub.registered_sessions == 0
        writer = sessions[0].batches()
        with pytest.raises(SlowConsumer):  # the writer ends with the error, backlog dropped
            await anext(writer)
        assert await hub.store.last_seq("crowd") == 5
    assert hub.registered_sessions == 0
    assert hub._rooms == {}
    assert not hub._by_name
    assert not hub._by_peer
    assert hub.lagging_sessions == 0


async def _crowd_with_readers(
    hub: Hub, stack: AsyncExitStack, readers: Callable[..., Reader]
) -> tuple[list[Session], list[Reader]]:
    stuck: list[Session] = []
    healthy: list[Reader] = []
    for i in range(305):
        session = await stack.enter_async_context(hub.connect(f"user{i}", peer="10.0.0.1:1"))
        await hub.join(session, "crowd")
        if i % 61 == 0:  # 5 readers spread among 300 that never read
            healthy.append(readers(session))
        else:
            stuck.append(session)
    assert len(healthy) == 5
    assert len(stuck) == 300
    for reader in healthy:
        await reader.wait_joined("crowd")
    return stuck, healthy


def _check_survivors(hub: Hub, stuck: list[Session], healthy: list[Reader], count: int) -> None:
    assert all(isinstance(s.error, SlowConsumer) for s in stuck)
    assert hub.session_count("crowd") == 5
    assert hub.registered_sessions == 5
    for reader in healthy:
        assert reader.session.error is None
        assert seqs(reader.events) == list(range(1, count + 1))


async def test_the_cascade_spares_readers_that_keep_up(readers: Callable[..., Reader]) -> None:
    hub = make_hub(queue_size=4)
    async with AsyncExitStack() as stack:
        stuck, healthy = await _crowd_with_readers(hub, stack, readers)
        posted = [f"m{n}" for n in range(12)]
        await post_paced(hub, "crowd", posted, healthy)  # the 5th evicts the 300
        _check_survivors(hub, stuck, healthy, 12)
    assert hub.registered_sessions == 0
    assert hub._rooms == {}


async def test_the_cascade_spares_readers_once_its_leave_notices_are_read(
    readers: Callable[..., Reader],
) -> None:
    hub = make_hub(queue_size=4)
    async with AsyncExitStack() as stack:
        stuck, healthy = await _crowd_with_readers(hub, stack, readers)
        await post_paced(hub, "crowd", [f"m{n}" for n in range(5)], healthy)
        assert all(isinstance(s.error, SlowConsumer) for s in stuck)
        for reader in healthy:  # the room's tick tells of the leaves before the next message
            await reader.wait_for(
                lambda r=reader: any(
                    isinstance(e, PresenceChange | PresenceSummary)
                    and not getattr(e, "joined", True)
                    for e in r.events
                )
            )
        await post_paced(hub, "crowd", [f"m{n}" for n in range(5, 12)], healthy)
        _check_survivors(hub, stuck, healthy, 12)
    assert hub.registered_sessions == 0
    assert hub._rooms == {}


# -- 2. replay bound ------------------------------------------------------------------------


async def test_a_replay_is_paged_in_lazily_and_bounded_by_the_queue(
    readers: Callable[..., Reader],
) -> None:
    store = CountingStore()
    await fill(store, "big", 5000)
    limits = make_limits(max_replay=10_000, queue_size=64)
    hub = Hub(store, limits)
    async with hub.connect("slow", peer="10.0.0.2:1") as session:
        for cycle in range(30):
            await hub.join(session, "big", history=5000)
            assert len(session._queue) <= limits.max_batch
            assert not any(isinstance(e.event, Message) for e in session._queue)
            assert all(not p.held for p in session._joins.values())
            await hub.leave(session, "big")
            assert session._joins == {}, f"cycle {cycle} left a replay buffer"
        assert store.reads == []  # nothing is read for a writer that never asks
        # Each join answered (without its replay) and each leave: nothing else.
        kinds = [type(e.event).__name__ for e in session._queue]
        assert kinds == ["RoomJoined", "RoomLeft"] * 30
        assert not session.closed

        store.probe = lambda: len(session._queue)
        await hub.join(session, "big", history=5000)
        reader = readers(session, start=False)
        await reader.step()
        assert len(store.reads) == 1  # the first write needed one page, not the history
        reader.start()
        await reader.wait_for(lambda: sum(isinstance(e, RoomJoined) for e in reader.events) == 31)

        events = reader.events
        assert [type(e) for e in events[:60]] == [RoomJoined, RoomLeft] * 30
        assert seqs(events) == list(range(1, 5001))
        last_message = max(i for i, e in enumerate(events) if isinstance(e, Message))
        joined = events[last_message + 1]
        assert isinstance(joined, RoomJoined)
        assert joined.position == Position(5000, hub.epoch)
        assert len(events) == last_message + 2
        # Lazily: about one read per max_batch, each at most a batch, asked only when short.
        assert all(limit <= limits.max_batch for limit in store.reads)
        assert len(store.reads) <= -(-5000 // limits.max_batch) + 1
        assert all(queued < limits.max_batch for queued in store.probed)
        assert max(len(w) for w in reader.writes) <= limits.max_batch
        # Batches mixed live notices and paged history: each was counted where it belongs.
        assert (session.queued, session._paged_waiting) == (0, 0)


# -- 3. resume ------------------------------------------------------------------------------


async def _joined_events(
    hub: Hub,
    readers: Callable[..., Reader],
    room: str,
    *,
    after: Position | None = None,
    history: int = 0,
) -> list[Event]:
    async with hub.connect("resumer") as session:
        await hub.join(session, room, after=after, history=history)
        reader = readers(session)
        await reader.wait_joined(room)
        return list(reader.events)


async def test_a_resume_replays_exactly_what_came_after_the_position(
    readers: Callable[..., Reader],
) -> None:
    hub = make_hub()
    await fill(hub.store, "r", 10)
    events = await _joined_events(hub, readers, "r", after=Position(4, hub.epoch), history=99)
    assert seqs(events) == [5, 6, 7, 8, 9, 10]
    assert not any(isinstance(e, HistoryGap) for e in events)
    assert events[-1] == RoomJoined("r", ("resumer",), Position(10, hub.epoch), 1)


async def test_a_resume_beyond_max_replay_reports_the_gap(readers: Callable[..., Reader]) -> None:
    hub = make_hub(max_replay=5)
    await fill(hub.store, "r", 20)
    events = await _joined_events(hub, readers, "r", after=Position(3, hub.epoch))
    gap = events[0]
    assert isinstance(gap, HistoryGap)
    assert (gap.room, gap.first_seq, gap.last_seq) == ("r", 4, 15)
    assert "more than 5" in gap.reason
    assert seqs(events) == [16, 17, 18, 19, 20]
    assert isinstance(events[-1], RoomJoined)


async def test_a_resume_past_retention_reports_the_gap(readers: Callable[..., Reader]) -> None:
    hub = make_hub(MemoryStore(Retention(max_messages=10)))
    await fill(hub.store, "r", 30)
    events = await _joined_events(hub, readers, "r", after=Position(2, hub.epoch))
    gap = events[0]
    assert isinstance(gap, HistoryGap)
    assert (gap.first_seq, gap.last_seq) == (3, 20)
    assert "retention" in gap.reason
    assert seqs(events) == list(range(21, 31))


async def test_a_join_replays_its_last_messages_with_the_changes_among_them(
    readers: Callable[..., Reader],
) -> None:
    """Seqs number edits and reactions too: the last 3 seqs of a room whose last message took
    30 reactions were 3 reactions, and the join showed no message at all."""
    hub = make_hub()
    await fill(hub.store, "r", 5)  # h1..h5, seqs 1..5
    [h5] = [m for m in await hub.store.read("r") if m.text == "h5"]

    async def react(fans: range, emoji: str) -> None:
        for i in fans:
            await hub.store.append(
                id=uuid.uuid4().hex,
                room="r",
                sender=f"fan{i}",
                text="",
                sent_at=datetime.now(UTC),
                relation=Relation(RelationKind.REACT, h5.id, emoji),
            )

    await react(range(30), "👍")
    events = await _joined_events(hub, readers, "r", history=3)
    shown = [e for e in events if isinstance(e, Message) and e.relation is None]
    assert [m.text for m in shown] == ["h3", "h4", "h5"]
    assert len(seqs(events)) == 33  # and the 30 reactions after them
    # A bound on what is read for them: a room of changes replays fewer messages instead.
    await react(range(30, 30 + MIN_ENTRIES_SCANNED), "🎉")
    events = await _joined_events(hub, readers, "r", history=3)
    assert len(seqs(events)) == MIN_ENTRIES_SCANNED
    # ...and never past what a replay may hold.
    capped = make_hub(hub.store, max_replay=50)
    assert len(seqs(await _joined_events(capped, readers, "r", history=3))) == 50


@pytest.mark.parametrize(
    ("position", "reason"), [(Position(3, "f" * 32), "replaced"), (Position(99, ""), "rewound")]
)
async def test_a_resume_from_another_history_reports_it_replaced(
    readers: Callable[..., Reader], position: Position, reason: str
) -> None:
    hub = make_hub()
    await fill(hub.store, "r", 20)
    if not position.epoch:
        position = Position(position.seq, hub.epoch)
    events = await _joined_events(hub, readers, "r", after=position, history=2)
    gap = events[0]
    assert isinstance(gap, HistoryGap)
    assert (gap.first_seq, gap.last_seq) == (0, 0)
    assert reason in gap.reason
    assert seqs(events) == [19, 20]  # the latest `history`, as for a fresh join


async def test_live_messages_during_a_slow_replay_arrive_once_and_in_order(
    readers: Callable[..., Reader],
) -> None:
    hub = make_hub(queue_size=64, max_batch=100)
    await fill(hub.store, "r", 2000)
    async with hub.connect("slow") as session:
        await hub.join(session, "r", after=Position(0, hub.epoch))
        reader = readers(session, start=False)
        first = await reader.step()
        assert seqs(first) == list(range(1, 101))
        for n in range(40):  # while the replay is paused: held back, not interleaved
            await hub.post("live", f"live{n}", room="r")
        reader.start()
        await reader.wait_for_text("live39")
        events = reader.events
        assert seqs(events) == list(range(1, 2041))  # no duplicate, no gap
        joined = [i for i, e in enumerate(events) if isinstance(e, RoomJoined)]
        assert len(joined) == 1
        assert events[joined[0]].position.seq == 2000  # type: ignore[union-attr]
        assert seqs(events[: joined[0]]) == list(range(1, 2001))
        assert not any(isinstance(e, HistoryGap) for e in events)
        assert not session.closed


async def test_messages_posted_while_a_join_reads_last_seq_are_not_duplicated(
    readers: Callable[..., Reader],
) -> None:
    store = FlakyStore()
    hub = make_hub(store)
    await fill(store, "r", 10)
    async with hub.connect("joiner") as session:
        gate = store.gate("r")
        join = asyncio.create_task(hub.join(session, "r", after=Position(10, hub.epoch)))
        await asyncio.wait_for(store.entered["r"].wait(), TIMEOUT)
        for n in range(3):  # stored (11..13) and held before the join knows its last seq
            await hub.post("live", f"race{n}", room="r")
        del store.gates["r"]
        gate.set()
        await asyncio.wait_for(join, TIMEOUT)
        reader = readers(session)
        await reader.wait_joined("r")
        await hub.post("live", "after", room="r")
        await reader.wait_for_text("after")
        assert seqs(reader.events) == [11, 12, 13, 14]


class MarkerlessStore(MemoryStore):
    """Read markers out of reach (NATS gone for a moment) for the users in `fail`."""

    def __init__(self) -> None:
        super().__init__(Retention())
        self.fail: set[str] = set()

    async def read_marker(self, user: str, room: str) -> int:
        if user in self.fail:
            raise StoreError("no connection to NATS")
        return await super().read_marker(user, room)


async def test_a_join_whose_read_marker_cannot_be_read_tells_the_room_nothing(
    readers: Callable[..., Reader],
) -> None:
    """The join announced the user, then read its marker, and announced its leave when that
    failed: everyone saw "quinn joined" and "quinn left" for a user who never got in."""
    store = MarkerlessStore()
    hub = make_hub(store)
    async with hub.connect("watcher") as watcher, hub.connect("quinn") as quinn:
        await hub.join(watcher, "lobby")
        reader = readers(watcher)
        await reader.wait_joined("lobby")
        store.fail.add("quinn")
        with pytest.raises(StoreError, match="no connection to NATS"):
            await hub.join(quinn, "lobby")
        assert quinn.rooms == set()
        store.fail.clear()
        await hub.post("x", "after", room="lobby")
        await reader.wait_for_text("after")
        assert not [e for e in reader.events if isinstance(e, PresenceChange)]
        await hub.join(quinn, "lobby")  # once the marker can be read, the join goes through
        await reader.wait_for(lambda: bool(presence(reader.events)))
        assert [(p.name, p.joined) for p in presence(reader.events)] == [("quinn", True)]


class LateFailingStore(MemoryStore):
    """Appends of the text "fail late" wait for `release`, then fail having stored nothing: a
    post behind one in its room's line is stored, but delivered only once it is over."""

    def __init__(self) -> None:
        super().__init__(Retention())
        self.release = asyncio.Event()

    async def append(self, **fields: Any) -> Appended:
        if fields["text"] == "fail late":
            await self.release.wait()
            raise StoreError("the disk is full")
        return await super().append(**fields)


async def test_a_message_replayed_while_still_in_its_rooms_line_arrives_once(
    readers: Callable[..., Reader],
) -> None:
    store = LateFailingStore()
    hub = make_hub(store)
    async with hub.connect("joiner") as session:
        ahead = asyncio.create_task(hub.post("ann", "fail late", room="r", shielded=False))
        await asyncio.sleep(0)  # first in #r's line, its append waiting
        behind = asyncio.create_task(hub.post("ann", "stored", room="r", shielded=False))
        await asyncio.sleep(0)  # stored as seq 1, delivered after the post ahead
        await hub.join(session, "r", history=10)  # replays seq 1
        reader = readers(session)
        await reader.wait_joined("r")
        store.release.set()
        with pytest.raises(StoreError):
            await asyncio.wait_for(ahead, TIMEOUT)
        assert (await asyncio.wait_for(behind, TIMEOUT)).message.seq == 1
        await hub.post("ann", "after", room="r")
        await reader.wait_for_text("after")
        assert seqs(reader.events) == [1, 2]  # seq 1 once: replayed, not delivered again


async def test_a_post_whose_caller_gave_up_fails_without_an_unretrieved_exception() -> None:
    """A unary Send that timed out while the store hung, then the store failed: the post's own
    task had a failure nobody retrieved, and asyncio logged it with a traceback."""
    store = LateFailingStore()
    hub = make_hub(store)
    unhandled: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _, context: unhandled.append(context))
    try:
        caller = asyncio.create_task(hub.post("ann", "fail late", room="r"))  # shielded
        await asyncio.sleep(0)
        caller.cancel()  # the client gave up; the append goes on
        with pytest.raises(asyncio.CancelledError):
            await caller
        store.release.set()
        for _ in range(5):
            await asyncio.sleep(0)
        gc.collect()  # where asyncio reports a task's unretrieved exception
        assert unhandled == []
    finally:
        loop.set_exception_handler(None)


async def test_max_replay_zero_disables_the_replay_limit(readers: Callable[..., Reader]) -> None:
    hub = make_hub(max_replay=0)
    await fill(hub.store, "r", 10)
    fresh = await _joined_events(hub, readers, "r", history=5)
    resumed = await _joined_events(hub, readers, "r", after=Position(3, hub.epoch))
    assert seqs(fresh) == [6, 7, 8, 9, 10]
    assert seqs(resumed) == list(range(4, 11))
    assert not any(isinstance(e, HistoryGap) for e in resumed)


# -- 4. coalesced presence ------------------------------------------------------------------


def presence(events: list[Event]) -> list[PresenceChange | PresenceSummary]:
    return [e for e in events if isinstance(e, PresenceChange | PresenceSummary)]


async def test_a_room_forming_is_told_in_few_writes(readers: Callable[..., Reader]) -> None:
    hub = make_hub()
    async with AsyncExitStack() as stack:
        members: list[Reader] = []
        for i in range(50):
            session = await stack.enter_async_context(hub.connect(f"n{i:02d}"))
            await hub.join(session, "forming")
            members.append(readers(session))
            if i == 0:
                await members[0].wait_joined("forming")

        def told_of_last(reader: Reader) -> bool:
            return any(isinstance(e, PresenceChange) and e.name == "n49" for e in reader.events)

        for reader in members[:-1]:
            await reader.wait_for(lambda r=reader: told_of_last(r))

        first = presence(members[0].events)
        assert len(first) <= 50
        assert [(e.name, e.joined) for e in first] == [(f"n{i:02d}", True) for i in range(1, 50)]
        first_writes = [w for w in members[0].writes if presence(w)]
        assert len(first_writes) <= 5
        total_writes = sum(1 for m in members for w in m.writes if presence(w))
        assert total_writes <= 4 * 50  # not one write per change per member (50 * 49)


async def test_a_big_room_gets_one_summary_per_tick(readers: Callable[..., Reader]) -> None:
    hub = make_hub()
    async with AsyncExitStack() as stack:
        connect = stack.enter_async_context
        observer_session = await connect(hub.connect("observer"))
        await hub.join(observer_session, "big")
        observer = readers(observer_session)
        await observer.wait_joined("big")
        others = []
        for i in range(DETAIL_LIMIT + 9):
            session = await connect(hub.connect(f"m{i:03d}"))
            await hub.join(session, "big")
            others.append(session)

        def joins_told() -> int:
            told = presence(observer.events)
            changes = sum(1 for e in told if isinstance(e, PresenceChange) and e.joined)
            return changes + sum(e.joined for e in told if isinstance(e, PresenceSummary))

        # (A summary counts the observer too when its own join fell in the same tick.)
        await observer.wait_for(lambda: joins_told() >= DETAIL_LIMIT + 9)
        assert joins_told() <= DETAIL_LIMIT + 10
        seen = len(presence(observer.events))

        # One tick: 3 arrive, 2 leave, 1 leaves and comes back (cancels out).
        for i in range(3):
            session = await connect(hub.connect(f"new{i}"))
            await hub.join(session, "big")
        await hub.leave(others[0], "big")
        await hub.leave(others[1], "big")
        await hub.leave(others[2], "big")
        await hub.join(others[2], "big")

        await observer.wait_for(lambda: len(presence(observer.events)) > seen)
        summary = presence(observer.events)[seen]
        assert isinstance(summary, PresenceSummary)
        assert (summary.joined, summary.left, summary.members) == (3, 2, DETAIL_LIMIT + 11)
        assert summary.members == hub._rooms["big"].member_count


async def test_presence_notices_never_evict_a_full_member(readers: Callable[..., Reader]) -> None:
    hub = make_hub(queue_size=4)
    async with AsyncExitStack() as stack:
        connect = stack.enter_async_context
        full = await connect(hub.connect("full"))
        await hub.join(full, "r")
        full_reader = readers(full, start=False)
        assert isinstance((await full_reader.step())[-1], RoomJoined)  # then it stops reading
        watcher_session = await connect(hub.connect("watcher"))
        await hub.join(watcher_session, "r")
        watcher = readers(watcher_session)
        await watcher.wait_joined("r")
        for i in range(10):
            session = await connect(hub.connect(f"j{i}"))
            await hub.join(session, "r")
        await watcher.wait_for(
            lambda: any(getattr(e, "name", "").startswith("j") for e in watcher.events)
        )
        assert full.queued == 2  # notices fill only the first half of the queue...
        assert not full.closed
        assert full.error is None
        assert hub.session_count("r") == 12


async def test_a_burst_of_joins_does_not_evict_a_reader_that_keeps_up(
    readers: Callable[..., Reader],
) -> None:
    hub = make_hub(queue_size=8)
    async with AsyncExitStack() as stack:
        connect = stack.enter_async_context
        reader_session = await connect(hub.connect("reader"))
        await hub.join(reader_session, "r")
        reader = readers(reader_session)
        await reader.wait_joined("r")
        for i in range(20):  # one tick's worth of arrivals...
            session = await connect(hub.connect(f"j{i}"))
            await hub.join(session, "r")
        await hub.post("j0", "hello", room="r")  # ...announced right before this message
        await reader.wait_for_text("hello", timeout=2.0)
        assert reader.session.error is None


async def test_no_presence_notice_arrives_before_room_joined(
    readers: Callable[..., Reader],
) -> None:
    hub = make_hub()
    async with AsyncExitStack() as stack:
        connect = stack.enter_async_context
        watcher_session = await connect(hub.connect("watcher"))
        await hub.join(watcher_session, "r")
        watcher = readers(watcher_session)
        await watcher.wait_joined("r")
        alice = await connect(hub.connect("alice"))
        await hub.join(alice, "r")  # her writer has not run yet (a replay still to page in)
        bob = await connect(hub.connect("bob"))
        await hub.join(bob, "r")
        await watcher.wait_for(lambda: any(getattr(e, "name", "") == "bob" for e in watcher.events))
        alice_reader = readers(alice)
        await alice_reader.wait_joined("r")
        events = alice_reader.events
        joined_at = next(i for i, e in enumerate(events) if isinstance(e, RoomJoined))
        joined = events[joined_at]
        assert isinstance(joined, RoomJoined)
        assert presence(events[:joined_at]) == [], "a notice came before the join ended"
        assert "bob" in joined.members or any(
            isinstance(e, PresenceChange) and e.name == "bob" for e in events[joined_at:]
        )


async def test_a_newcomer_is_told_only_of_changes_after_its_room_joined(
    readers: Callable[..., Reader],
) -> None:
    hub = make_hub()
    async with AsyncExitStack() as stack:
        connect = stack.enter_async_context
        alice = await connect(hub.connect("alice"))
        await hub.join(alice, "r")
        gone = await connect(hub.connect("gone"))
        await hub.join(gone, "r")
        await hub.leave(gone, "r")
        # All within one tick: alice's arrival and gone's visit are pending as bob joins.
        bob_session = await connect(hub.connect("bob"))
        await hub.join(bob_session, "r")
        carol = await connect(hub.connect("carol"))
        await hub.join(carol, "r")
        await hub.post("carol", "hello", room="r")  # flushes the tick's notices before it
        bob = readers(bob_session)
        await bob.wait_for_text("hello", timeout=2.0)
        joined = next(e for e in bob.events if isinstance(e, RoomJoined))
        assert joined.members == ("alice", "bob")
        told = [(e.name, e.joined) for e in presence(bob.events) if isinstance(e, PresenceChange)]
        assert told == [("carol", True)]  # not alice's arrival or gone's visit, already past


# -- 5. ghost sessions ----------------------------------------------------------------------


async def test_the_registry_is_empty_after_every_kind_of_ending(
    readers: Callable[..., Reader],
) -> None:
    store = FlakyStore()
    store.fail |= {"broken", "slowfail"}
    hub = make_hub(store, queue_size=4)
    async with AsyncExitStack() as stack:
        connect = stack.enter_async_context
        a = await connect(hub.connect("a", peer="10.0.0.1:1"))
        await hub.join(a, "r1")
        await hub.join(a, "r2")
        a_reader = readers(a)
        await a_reader.wait_joined("r2")

        b = await connect(hub.connect("b", peer="10.0.0.1:2"))
        await hub.join(b, "r1")
        await hub.leave(b, "r1")

        c = await connect(hub.connect("c", peer="10.0.0.2:1"))  # never reads
        await hub.join(c, "r1")
        listener = await connect(hub.connect("", peer="10.0.0.2:2"))  # anonymous, never reads
        await hub.join(listener, "r1")

        d = await connect(hub.connect("d", peer="10.0.0.3:1"))
        with pytest.raises(StoreError):
            await hub.join(d, "broken")
        assert d._joins == {}
        assert d.rooms == set()
        assert "broken" not in hub._rooms
        await hub.join(d, "r2")  # the session goes on

        e = await connect(hub.connect("e", peer="10.0.0.3:2"))
        gate = store.gate("slowfail")
        failing = asyncio.create_task(hub.join(e, "slowfail"))
        await asyncio.wait_for(store.entered["slowfail"].wait(), TIMEOUT)
        for n in range(3):  # held for e's join, which then fails
            await hub.post("x", f"held{n}", room="slowfail")
        gate.set()
        with pytest.raises(StoreError):
            await asyncio.wait_for(failing, TIMEOUT)
        assert e._joins == {}, "a failed join kept its held messages"
        assert not any(isinstance(env.event, Message) for env in e._queue)
        assert "slowfail" not in hub._rooms
        assert e.rooms == set()

        f = await connect(hub.connect("f", peer="10.0.0.3:3"))
        store.gate("stuck")
        stuck = asyncio.create_task(hub.join(f, "stuck"))
        await asyncio.wait_for(store.entered["stuck"].wait(), TIMEOUT)
        stuck.cancel()
        with pytest.raises(asyncio.CancelledError):
            await stuck
        assert f._joins == {}
        assert "stuck" not in hub._rooms
        assert f.rooms == set()

        g = await connect(hub.connect("g", peer="10.0.0.4:1"))  # lagging when it ends
        await hub.join(g, "r3")
        g_reader = readers(g, start=False)
        await g_reader.step()
        for n in range(3):
            await hub.post("x", f"lag{n}", room="r3")
        assert g.lagging
        assert hub.lagging_sessions == 1

        await post_paced(hub, "r1", [f"evict{n}" for n in range(5)], [a_reader])
        assert isinstance(c.error, SlowConsumer)
        assert isinstance(listener.error, SlowConsumer)
        assert hub.registered_sessions == 6  # a, b, d, e, f, g
        assert hub.session_count("r1") == 1
        assert not a.closed
    assert hub.registered_sessions == 0
    assert hub._rooms == {}
    assert not hub._by_name
    assert not hub._by_peer
    assert hub.lagging_sessions == 0


# -- 6. pushback ----------------------------------------------------------------------------


async def _members_not_reading(
    hub: Hub,
    stack: AsyncExitStack,
    readers: Callable[..., Reader],
    room: str,
    *,
    peer: str = "",
    names: str = "m",
) -> list[Reader]:
    """Three members of `room` (`names`0 to 2, from `peer`), each of which read its RoomJoined
    and the others' arrivals, and then nothing: from here on their queues fill in step."""
    members: list[Reader] = []
    for i in range(3):
        session = await stack.enter_async_context(hub.connect(f"{names}{i}", peer=peer))
        await hub.join(session, room)
        members.append(readers(session, start=False))
    hub._presence.flush(room)
    for member in members:
        while member.session.queued or not member.events:
            await member.step()
    return members


async def _post_until_refused(hub: Hub, room: str) -> tuple[int, LimitExceeded]:
    """Post to `room` until a post is refused (at most 8): how many were accepted, and why."""
    for n in range(8):  # the join notices count too: refused before 8 are queued
        try:
            await hub.post("poster", f"m{n}", room=room)
        except LimitExceeded as error:
            return n, error
    raise AssertionError("8 posts and none refused")


async def test_a_majority_lagging_refuses_posts_until_readers_catch_up(
    readers: Callable[..., Reader],
) -> None:
    hub = make_hub(queue_size=8)
    async with AsyncExitStack() as stack:
        members = await _members_not_reading(hub, stack, readers, "busy")
        accepted, refused = await _post_until_refused(hub, "busy")
        assert accepted >= 1
        assert refused.retry_after == BUSY_RETRY
        assert sum(m.session.lagging for m in members) >= 2  # more than half full
        assert await hub.store.last_seq("busy") == accepted  # the refused one is not stored
        assert not any(m.session.closed for m in members)  # nobody evicted
        with pytest.raises(LimitExceeded):
            await hub.post("poster", "again", room="busy")

        waiting = asyncio.create_task(hub.until_accepting("busy"))
        for _ in range(3):
            await asyncio.sleep(0)
        assert not waiting.done()
        for member in members:
            member.start()
        await asyncio.wait_for(waiting, TIMEOUT)
        appended = await hub.post("poster", "accepted", room="busy")
        assert appended.message.seq == accepted + 1
        for member in members:
            await member.wait_for_text("accepted")
            assert seqs(member.events) == list(range(1, accepted + 2))


async def test_one_address_of_never_reading_sessions_is_one_voice_not_a_majority(
    readers: Callable[..., Reader],
) -> None:
    """Six sessions from one address that never read outnumber two readers from two others: by
    session a majority lags and every post would be refused; by principal it is one of three,
    so posts go on, the readers get every one, and the six overflow as slow consumers."""
    hub = make_hub(queue_size=8)
    async with AsyncExitStack() as stack:
        followers = []
        for i in (1, 2):
            session = await stack.enter_async_context(hub.connect(f"r{i}", peer=f"10.0.0.{i}"))
            await hub.join(session, "busy")
            followers.append(readers(session))
        silent = [
            *await _members_not_reading(hub, stack, readers, "busy", peer="10.0.0.9", names="x"),
            *await _members_not_reading(hub, stack, readers, "busy", peer="10.0.0.9", names="y"),
        ]
        lagged = False
        for n in range(12):  # never refused as busy
            await post_paced(hub, "busy", [f"m{n}"], followers)
            lagged = lagged or hub.lagging_sessions >= 4
        assert lagged  # by session, a majority lagged on the way
        for follower in followers:
            assert texts(follower.events) == [f"m{n}" for n in range(12)]
        assert all(member.session.closed for member in silent)
        assert hub.stats.slow_consumers == 6


async def test_a_single_address_load_still_pushes_back_as_one_lagging_principal(
    readers: Callable[..., Reader],
) -> None:
    """Every session from one address (a load generator, one NAT): most of them lagging make
    that principal lag, and it is the room's only one."""
    hub = make_hub(queue_size=8)
    async with AsyncExitStack() as stack:
        members = await _members_not_reading(hub, stack, readers, "busy", peer="10.0.0.1")
        _, refused = await _post_until_refused(hub, "busy")
        assert refused.retry_after == BUSY_RETRY
        assert sum(m.session.lagging for m in members) >= 2
        assert not any(m.session.closed for m in members)


async def test_stuck_means_no_progress_while_lagging_not_an_old_last_write(
    readers: Callable[..., Reader], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pressure, "STALL_CHECK_INTERVAL", 0.0)  # look at every post
    hub = make_hub(queue_size=8)
    async with AsyncExitStack() as stack:
        readers_ = await _members_not_reading(hub, stack, readers, "quiet")
        members = [reader.session for reader in readers_]
        for member in members:  # its last write: long ago, all quiet
            member.last_progress -= 2 * STALL_TIMEOUT
        await _post_until_refused(hub, "quiet")  # a burst: every reader behind, nobody stuck
        assert all(m.lagging and not m.closed for m in members)

        for member in members:  # then no write at all while lagging: stuck
            member.last_progress -= 2 * STALL_TIMEOUT
        await hub.post("poster", "after", room="quiet")  # the stuck are cut off: accepted
        assert all(isinstance(m.error, SlowConsumer) for m in members)
        assert "nothing was read for 10s" in str(members[0].error)


async def test_sessions_stuck_in_one_room_are_cut_off_by_a_post_to_another(
    readers: Callable[..., Reader], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three stuck in #a are most of the server, so a post to #b is refused as the server's
    pushback: the scan for stuck sessions must cover the server too, or #b is refused until
    someone posts to #a (it used to scan only #b)."""
    monkeypatch.setattr(pressure, "STALL_CHECK_INTERVAL", 0.0)  # look at every post
    hub = make_hub(queue_size=8)
    async with AsyncExitStack() as stack:
        stuck = [reader.session for reader in await _members_not_reading(hub, stack, readers, "a")]
        in_b = await stack.enter_async_context(hub.connect("reader"))
        await hub.join(in_b, "b")  # a reader of #b, keeping up
        reader = readers(in_b)
        await reader.wait_joined("b")
        await _post_until_refused(hub, "a")
        with pytest.raises(LimitExceeded, match="#b is busy"):
            await hub.post("poster", "to b", room="b")

        for member in stuck:  # no write while lagging, for longer than the stall timeout
            member.last_progress -= 2 * STALL_TIMEOUT
        appended = await hub.post("poster", "to b", room="b")
        assert appended.message.seq == 1
        assert all(isinstance(m.error, SlowConsumer) for m in stuck)
        await reader.wait_for_text("to b")
        assert in_b.error is None


async def test_a_leave_right_after_a_join_answers_the_join_first(
    readers: Callable[..., Reader],
) -> None:
    """join, leave, join written at once: joined, left, joined. The leave came while the first
    join's replay was still to be paged in, and its RoomJoined used to be dropped with it."""
    store = MemoryStore(Retention())
    await fill(store, "r", 5)
    hub = make_hub(store)
    async with hub.connect("alice") as session:
        await hub.join(session, "r", history=5)
        await hub.leave(session, "r")
        await hub.join(session, "r", history=5)
        reader = readers(session)
        await reader.wait_for(
            lambda: [e for e in reader.events if isinstance(e, RoomJoined)][1:] != []
        )
        kinds = [type(e).__name__ for e in reader.events if isinstance(e, RoomJoined | RoomLeft)]
        assert kinds == ["RoomJoined", "RoomLeft", "RoomJoined"]
        assert texts(reader.events)[-5:] == [f"h{i}" for i in range(1, 6)]  # the rejoin's


async def test_without_auth_a_name_s_sessions_are_counted_per_address() -> None:
    """A claimed name's session limit cannot be used up from another address (16 streams named
    alice from one address used to keep the real alice out); with auth it is the user's."""
    hub = make_hub(max_sessions_per_user=2)
    async with AsyncExitStack() as stack:
        for _ in range(2):
            await stack.enter_async_context(hub.connect("alice", peer="10.0.0.66"))
        refusal = r"'alice' already has 2 sessions open from 10\.0\.0\.66$"
        with pytest.raises(LimitExceeded, match=refusal):
            await stack.enter_async_context(hub.connect("alice", peer="10.0.0.66"))
        await stack.enter_async_context(hub.connect("alice", peer="10.0.0.7"))  # the real one

        for _ in range(2):
            await stack.enter_async_context(hub.connect("bob", authenticated=True, peer="a"))
        with pytest.raises(LimitExceeded, match=r"'bob' already has 2 sessions open$"):
            await stack.enter_async_context(hub.connect("bob", authenticated=True, peer="b"))


async def test_unread_counts_come_a_bounded_page_at_a_time_and_cost_more() -> None:
    """Counting a room's unread messages is the store's work: a page with counts holds at most
    UNREAD_PAGE rooms and costs a request per UNREAD_ROOMS_PER_REQUEST of them (one client
    asking for 1,000 rooms' counts kept SQLite's thread busy for 0.4 s a page)."""
    store = MemoryStore(Retention())
    for n in range(150):
        await fill(store, f"r{n:03d}", 1)
    hub = make_hub(store, request_rate=1, request_burst=25)
    counted, token = await hub.rooms(limit=1000, principal="p", user="alice")
    assert len(counted) == listing.UNREAD_PAGE == 100
    assert token == "r099"
    assert all(room.unread == 1 for room in counted)
    await hub.rooms(after=token, limit=1000, principal="p", user="alice")  # 20 of 25 spent
    with pytest.raises(LimitExceeded):
        await hub.rooms(limit=1000, principal="p", user="alice")
    plain, _ = await hub.rooms(limit=1000, principal="q")  # without counts: one request
    assert len(plain) == 150


async def test_one_laggard_among_healthy_readers_is_evicted_at_capacity(
    readers: Callable[..., Reader],
) -> None:
    hub = make_hub(queue_size=8)
    async with AsyncExitStack() as stack:
        healthy: list[Reader] = []
        for i in range(4):
            session = await stack.enter_async_context(hub.connect(f"ok{i}"))
            await hub.join(session, "r")
            healthy.append(readers(session))
            await healthy[-1].wait_joined("r")
        await healthy[0].wait_for(  # their own arrivals are told before the laggard's
            lambda: any(getattr(e, "name", "") == "ok3" for e in healthy[0].events)
        )
        laggard = await stack.enter_async_context(hub.connect("laggard"))
        await hub.join(laggard, "r")
        await readers(laggard, start=False).step()  # RoomJoined, then it stops reading
        await healthy[0].wait_for(
            lambda: any(getattr(e, "name", "") == "laggard" for e in healthy[0].events)
        )
        assert laggard.queued == 0  # nobody arrived after it

        await post_paced(hub, "r", [f"m{n}" for n in range(8)], healthy)  # never refused
        assert laggard.lagging
        assert not laggard.closed
        await post_paced(hub, "r", ["m8"], healthy)
        assert isinstance(laggard.error, SlowConsumer)
        await post_paced(hub, "r", [f"m{n}" for n in range(9, 12)], healthy)
        assert hub.session_count("r") == 4
        for reader in healthy:
            assert reader.session.error is None
            assert seqs(reader.events) == list(range(1, 13))


# -- 7. limits ------------------------------------------------------------------------------


async def test_a_repeated_join_is_already_joined() -> None:
    hub = make_hub()
    async with hub.connect("a") as session:
        await hub.join(session, "r")  # still pending: nobody reads
        with pytest.raises(AlreadyJoined):
            await hub.join(session, "r")
        assert hub.session_count("r") == 1
        assert session.rooms == {"r"}


async def test_an_oversize_idempotency_key_is_invalid() -> None:
    hub = make_hub()
    await hub.post("a", "ok", room="r", key="k" * 128)
    for key in ("k" * 129, "é" * 65):  # 129 and 130 bytes of UTF-8
        with pytest.raises(InvalidInput, match="idempotency key"):
            await hub.post("a", "too long", room="r", key=key)
    assert await hub.store.last_seq("r") == 1


async def test_sessions_per_peer_are_capped() -> None:
    hub = make_hub(max_sessions_per_peer=2)
    async with hub.connect("a", peer="p1"), hub.connect("b", peer="p1"):
        with pytest.raises(LimitExceeded):
            async with hub.connect("c", peer="p1"):
                pass
        async with hub.connect("c", peer="p2"):
            assert hub.registered_sessions == 3
    async with hub.connect("c", peer="p1"):
        assert hub.registered_sessions == 1
    assert hub.registered_sessions == 0
    assert not hub._by_peer


async def test_sessions_in_total_are_capped() -> None:
    hub = make_hub(max_sessions=2)
    async with hub.connect("a", peer="p1"), hub.connect("b", peer="p2"):
        with pytest.raises(LimitExceeded):
            async with hub.connect("c", peer="p3"):
                pass
        assert hub.registered_sessions == 2
    async with hub.connect("c", peer="p3"):
        assert hub.registered_sessions == 1


async def test_joins_are_rate_limited_per_principal() -> None:
    hub = make_hub(request_rate=1, request_burst=2)
    async with (
        hub.connect("a", peer="10.0.0.9:1") as a,
        hub.connect("b", peer="10.0.0.9:1") as b,
        hub.connect("c", peer="10.0.0.8:1") as c,
    ):
        await hub.join(a, "r1")
        await hub.join(a, "r2")
        with pytest.raises(LimitExceeded) as refused:
            await hub.join(a, "r3")
        assert refused.value.retry_after is not None
        assert refused.value.retry_after > 0
        assert "r3" not in a.rooms
        assert "r3" not in hub._rooms
        with pytest.raises(LimitExceeded):  # same address, same bucket
            await hub.join(b, "r3")
        await hub.join(c, "r3")  # another address is not affected
        assert hub.session_count("r3") == 1
        # A leave is never refused for the rate: refused, the client had forgotten the room
        # while the session was still in it here.
        await hub.leave(a, "r1")
        assert "r1" not in a.rooms
        assert hub.session_count("r1") == 0


def test_the_rate_limiter_forgets_the_least_recently_used_bucket_only() -> None:
    limiter = RateLimiter(0.001, 1, max_buckets=3)
    assert [limiter.wait_time(p) for p in "abc"] == [0.0, 0.0, 0.0]
    assert limiter.wait_time("a") > 0  # a is now the most recently used
    assert limiter.wait_time("d") == 0.0  # b, the least recently used, goes
    assert len(limiter) == 3
    assert limiter.wait_time("a") > 0  # kept: still empty
    assert limiter.wait_time("c") > 0  # kept: still empty
    assert limiter.wait_time("b") == 0.0  # forgotten, so back full; d goes now
    assert len(limiter) == 3
    assert limiter.wait_time("a") > 0
    assert limiter.wait_time("c") > 0
    assert limiter.wait_time("d") == 0.0
    assert len(limiter) == 3


async def test_anonymous_streams_have_a_cap_of_their_own() -> None:
    hub = Hub(MemoryStore(Retention()), Limits(rate=0, request_rate=0, max_anonymous_sessions=2))
    async with AsyncExitStack() as stack:
        for _ in range(2):
            await stack.enter_async_context(hub.connect(""))
        with pytest.raises(LimitExceeded, match="2 anonymous streams are open"):
            await stack.enter_async_context(hub.connect(""))
        # Named sessions are not anonymous: they count against their own limits only.
        await stack.enter_async_context(hub.connect("alice"))
    async with hub.connect(""):  # the count went back down as the streams ended
        assert hub.registered_sessions == 1


async def test_a_history_page_ends_by_bytes_and_costs_its_size_in_requests() -> None:
    """1,000 messages of 4,096 four-byte characters made one request a 16 MB answer, held whole
    for a client that never reads it, and counted as one request."""
    hub = make_hub(request_rate=1, request_burst=20)
    big = "😀" * 4096  # 16 KiB of UTF-8: 64 of them are a page's 1 MiB
    for _ in range(100):
        await hub.store.append(
            id=uuid.uuid4().hex, room="r", sender="old", text=big, sent_at=datetime.now(UTC)
        )
    page = await hub.history("r", limit=100, principal="p")
    assert len(page) == MAX_HISTORY_PAGE_BYTES // len(big.encode())
    rest = await hub.history("r", limit=100, after=page[-1].seq, principal="p")
    assert len(rest) == 100 - len(page)
    # Each page cost a request and one more per 64 KiB of text (16 and 9): the 20 are spent.
    with pytest.raises(LimitExceeded):
        await hub.history("r", limit=1, principal="p")


def test_sends_seen_from_another_node_count_for_a_user_not_seen_here_yet() -> None:
    """Counted only for a user with a bucket here: a user's first sends on each node each had
    a whole burst (two nodes, rate 1/s, burst 3: six accepted)."""
    limiter = RateLimiter(0.001, 3)
    for _ in range(3):
        limiter.charge("alice")  # her burst, spent on the other node
    assert limiter.wait_time("alice") > 0


async def test_a_replay_page_ends_by_bytes_and_the_next_one_goes_on() -> None:
    """A session that stops reading holds one replay page: 512 messages of 16 KiB were 8 MB."""
    store = MemoryStore(Retention())
    big = "😀" * 4096  # 16 KiB of UTF-8
    for _ in range(100):
        await store.append(
            id=uuid.uuid4().hex, room="r", sender="old", text=big, sent_at=datetime.now(UTC)
        )
    cursor = ReplayCursor(store, "r", after=0, until=100)
    pages = []
    while page := await cursor.next_page(512):
        pages.append([e.event.seq for e in page if isinstance(e.event, Message)])
    assert max(map(len, pages)) == MAX_REPLAY_PAGE_BYTES // len(big.encode())
    assert [seq for page in pages for seq in page] == list(range(1, 101))
