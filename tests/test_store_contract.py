"""The HistoryStore contract (grpcchat/core/history.py), once, against every engine.

Each test takes `open_history` (or `store`) and so runs once per entry in ENGINES. To hold a new
engine to the contract, add its name to ENGINES and a branch to `store_url` that returns fresh,
empty URLs of it (a fixture may start a server there, e.g. NATS, via `request.getfixturevalue`).

No test sleeps: dedup is judged by the times handed to `append`, and age by the wall clock
against times placed well inside or outside `max_age`.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Protocol

import pytest
from hypothesis import Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from grpcchat.core.history import Appended, HistoryStore, Retention, RoomCount
from grpcchat.core.models import Message
from grpcchat.server.engines import open_store

try:
    import nats  # noqa: F401  (only to know whether the NATS engine can run)

    NATS = pytest.param("nats")
except ImportError:
    NATS = pytest.param("nats", marks=pytest.mark.skip(reason="nats-py is not installed"))

ENGINES = ["memory", "sqlite", NATS]


class OpenHistory(Protocol):
    def __call__(self, retention: Retention | None = None) -> Awaitable[HistoryStore]: ...


@pytest.fixture(params=ENGINES)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], str]:
    """A factory of URLs, each naming a new, empty history of the engine under test."""
    if request.param == "memory":
        return lambda: "memory://"
    if request.param == "sqlite":
        numbers = itertools.count()
        return lambda: f"sqlite://{tmp_path}/history-{next(numbers)}.db"
    if request.param == "nats":
        nats_url = request.getfixturevalue("nats_url")
        return lambda: f"{nats_url}?stream=CHAT_{uuid.uuid4().hex}"
    raise AssertionError(f"no URL factory for engine {request.param!r}")


@pytest.fixture
async def open_history(store_url: Callable[[], str]) -> AsyncIterator[OpenHistory]:
    """Opens new histories (`await open_history(Retention(...))`), closing them all after."""
    opened: list[HistoryStore] = []

    async def open_(retention: Retention | None = None) -> HistoryStore:
        store = await open_store(store_url(), retention)
        opened.append(store)
        return store

    yield open_
    for store in opened:
        await store.aclose()


@pytest.fixture
async def store(open_history: OpenHistory) -> HistoryStore:
    return await open_history()


def now() -> datetime:
    return datetime.now(UTC)


async def append(
    store: HistoryStore,
    room: str = "lobby",
    text: str = "hi",
    *,
    sender: str = "ann",
    key: str = "",
    at: datetime | None = None,
    action: bool = False,
) -> Appended:
    return await store.append(
        id=uuid.uuid4().hex,
        room=room,
        sender=sender,
        text=text,
        sent_at=at or now(),
        key=key,
        action=action,
    )


async def fill(store: HistoryStore, room: str, count: int) -> list[Message]:
    return [(await append(store, room, f"m{i}")).message for i in range(count)]


def seqs(messages: list[Message]) -> list[int]:
    return [m.seq for m in messages]


async def listed(store: HistoryStore, after: str = "", limit: int = 100) -> list[tuple[str, int]]:
    """One page of `rooms`, as (name, messages) pairs."""
    return [(r.name, r.messages) for r in await store.rooms(after=after, limit=limit)]


async def every_room(store: HistoryStore, page_size: int) -> list[RoomCount]:
    """Every listed room, a page at a time, stopping at the first page that is not full."""
    seen: list[RoomCount] = []
    while True:
        page = await store.rooms(after=seen[-1].name if seen else "", limit=page_size)
        seen += page
        if len(page) < page_size:
            return seen


# -- positions ------------------------------------------------------------------------------


async def test_seqs_count_from_one_in_each_room_independently(store: HistoryStore) -> None:
    order = ["a", "b", "a", "a", "c", "b", "a"]
    assigned = [(await append(store, room)).message.seq for room in order]
    assert assigned == [1, 1, 2, 3, 1, 2, 4]
    assert [await store.last_seq(r) for r in ("a", "b", "c", "never-used")] == [4, 2, 1, 0]
    assert seqs(await store.read("a")) == [1, 2, 3, 4]


async def test_every_message_carries_the_stores_epoch(store: HistoryStore) -> None:
    assert store.epoch
    appended = await append(store)
    assert appended.message.epoch == store.epoch
    assert [m.epoch for m in await store.read("lobby")] == [store.epoch]


async def test_a_new_history_has_a_new_epoch(open_history: OpenHistory) -> None:
    first, second = await open_history(), await open_history()
    assert first.epoch != second.epoch


async def test_a_message_reads_back_exactly_as_appended(store: HistoryStore) -> None:
    sent_at = datetime(2031, 5, 6, 7, 8, 9, 123456, tzinfo=timezone(timedelta(hours=2)))
    appended = await store.append(
        id="id-1",
        room="lobby",
        sender="ann",
        text="multi\nline ünïcode [bold]",
        sent_at=sent_at,
        key="k",
        action=True,
    )
    assert not appended.duplicate
    expected = Message(
        id="id-1",
        room="lobby",
        sender="ann",
        text="multi\nline ünïcode [bold]",
        sent_at=sent_at,
        seq=1,
        epoch=store.epoch,
        action=True,
    )
    assert appended.message == expected
    assert await store.read("lobby") == [expected]
    assert appended.message.sent_at.utcoffset() == timedelta(0)


# -- paging ---------------------------------------------------------------------------------

PAGES = [
    # after, before, limit, newest_first -> seqs, out of a room holding 1..10
    pytest.param(None, None, 3, False, [1, 2, 3], id="oldest"),
    pytest.param(None, None, 3, True, [10, 9, 8], id="newest"),
    pytest.param(None, None, 100, False, list(range(1, 11)), id="all"),
    pytest.param(4, None, 3, False, [5, 6, 7], id="after"),
    pytest.param(9, None, 3, False, [10], id="after-near-end"),
    pytest.param(10, None, 3, False, [], id="after-last"),
    pytest.param(None, 4, 10, True, [3, 2, 1], id="before"),
    pytest.param(None, 2, 10, True, [1], id="before-near-start"),
    pytest.param(None, 1, 10, True, [], id="before-first"),
    pytest.param(None, 8, 2, False, [1, 2], id="oldest-first-with-before-starts-at-oldest"),
    pytest.param(7, None, 2, True, [10, 9], id="newest-first-with-after-starts-at-newest"),
    pytest.param(2, 6, 10, False, [3, 4, 5], id="between"),
    pytest.param(2, 6, 2, False, [3, 4], id="between-oldest-end"),
    pytest.param(2, 6, 2, True, [5, 4], id="between-newest-end"),
    pytest.param(3, 4, 10, False, [], id="nothing-strictly-between"),
    pytest.param(0, 11, 100, False, list(range(1, 11)), id="bounds-outside"),
    pytest.param(-5, 99, 100, True, list(range(10, 0, -1)), id="bounds-far-outside"),
    pytest.param(None, None, 0, False, [], id="limit-0"),
]


@pytest.mark.parametrize(("after", "before", "limit", "newest_first", "expected"), PAGES)
async def test_read_pages_by_exclusive_bounds(
    store: HistoryStore,
    after: int | None,
    before: int | None,
    limit: int,
    newest_first: bool,
    expected: list[int],
) -> None:
    await fill(store, "lobby", 10)
    await fill(store, "other", 3)
    page = await store.read(
        "lobby", after=after, before=before, limit=limit, newest_first=newest_first
    )
    assert seqs(page) == expected
    assert {m.room for m in page} <= {"lobby"}


async def test_paging_with_cursors_visits_every_message_once(store: HistoryStore) -> None:
    stored = await fill(store, "lobby", 23)
    forward: list[Message] = []
    while page := await store.read("lobby", after=forward[-1].seq if forward else None, limit=5):
        forward += page
    backward: list[Message] = []
    while page := await store.read(
        "lobby", before=backward[-1].seq if backward else None, limit=5, newest_first=True
    ):
        backward += page
    assert forward == stored
    assert backward == stored[::-1]


async def test_an_unknown_room_reads_empty(store: HistoryStore) -> None:
    assert await store.read("nowhere") == []
    assert await store.read("nowhere", newest_first=True) == []


# -- idempotency ----------------------------------------------------------------------------


async def test_a_repeated_key_returns_the_original_and_stores_nothing(store: HistoryStore) -> None:
    t0 = now()
    first = await append(store, text="one", key="k", at=t0)
    again = await append(store, text="two", key="k", at=t0 + timedelta(seconds=1), action=True)
    assert again == Appended(first.message, duplicate=True)
    assert await store.last_seq("lobby") == 1
    assert await store.read("lobby") == [first.message]
    assert await listed(store) == [("lobby", 1)]


async def test_a_repeated_key_from_another_room_returns_the_original(store: HistoryStore) -> None:
    first = await append(store, "a", key="k")
    again = await append(store, "b", key="k")
    assert again == Appended(first.message, duplicate=True)
    assert await store.last_seq("b") == 0


async def test_keys_belong_to_their_sender(store: HistoryStore) -> None:
    ann = await append(store, sender="ann", key="k")
    bob = await append(store, sender="bob", key="k")
    assert not bob.duplicate
    assert seqs([ann.message, bob.message]) == [1, 2]


async def test_an_empty_key_never_deduplicates(store: HistoryStore) -> None:
    t0 = now()
    results = [await append(store, key="", at=t0) for _ in range(3)]
    assert [r.duplicate for r in results] == [False] * 3
    assert await store.last_seq("lobby") == 3


async def test_a_key_repeated_after_the_window_makes_a_new_message(
    open_history: OpenHistory,
) -> None:
    window = timedelta(seconds=10)
    store = await open_history(Retention(dedup_window=window))
    t0 = now()
    first = await append(store, key="k", at=t0)
    inside = await append(store, key="k", at=t0 + window - timedelta(microseconds=1))
    assert inside == Appended(first.message, duplicate=True)
    fresh = await append(store, key="k", at=t0 + window)
    assert not fresh.duplicate
    assert fresh.message.seq == 2
    # The window now runs from the new message.
    repeat = await append(store, key="k", at=t0 + window + timedelta(seconds=5))
    assert repeat == Appended(fresh.message, duplicate=True)


async def test_a_key_is_judged_by_its_retry_not_by_a_later_stamped_append(
    open_history: OpenHistory,
) -> None:
    """A clock stepped back: another append stamped past the window does not make a retry
    stamped inside it a new message."""
    window = timedelta(seconds=10)
    store = await open_history(Retention(dedup_window=window))
    t0 = now()
    first = await append(store, sender="ann", key="k", at=t0)
    await append(store, sender="bob", key="other", at=t0 + 2 * window)
    retry = await append(store, sender="ann", key="k", at=t0 + timedelta(seconds=1))
    assert retry == Appended(first.message, duplicate=True)


async def test_a_key_outlives_its_pruned_message(open_history: OpenHistory) -> None:
    store = await open_history(Retention(max_messages=1))
    first = await append(store, sender="ann", key="k")
    await append(store, sender="bob")
    assert seqs(await store.read("lobby")) == [2]
    assert await append(store, sender="ann", key="k") == Appended(first.message, duplicate=True)


# -- retention ------------------------------------------------------------------------------


async def test_retention_by_count_keeps_the_newest_and_never_reuses_seqs(
    open_history: OpenHistory,
) -> None:
    store = await open_history(Retention(max_messages=3))
    await fill(store, "lobby", 5)
    await fill(store, "other", 2)
    assert seqs(await store.read("lobby")) == [3, 4, 5]
    assert seqs(await store.read("lobby", newest_first=True, limit=2)) == [5, 4]
    assert await store.last_seq("lobby") == 5
    assert await listed(store) == [("lobby", 3), ("other", 2)]
    # A reader resuming after seq 1 sees the gap: the first message is not seq 2.
    assert seqs(await store.read("lobby", after=1)) == [3, 4, 5]
    assert (await append(store)).message.seq == 6
    assert seqs(await store.read("lobby")) == [4, 5, 6]


async def test_retention_by_age_drops_every_expired_message(open_history: OpenHistory) -> None:
    store = await open_history(Retention(max_age=timedelta(hours=1)))
    old = now() - timedelta(hours=2)
    await append(store, "lobby", "old", at=old)
    await append(store, "lobby", "fresh")
    # The clock stepped back: an expired message after a fresh one goes too.
    await append(store, "lobby", "old again", at=old)
    await append(store, "gone", "old", at=old)
    assert [m.text for m in await store.read("lobby")] == ["fresh"]
    assert [m.text for m in await store.read("lobby", newest_first=True)] == ["fresh"]
    assert await listed(store) == [("lobby", 1)]
    assert await store.last_seq("lobby") == 3
    assert await store.last_seq("gone") == 1
    assert (await append(store, "gone")).message.seq == 2


# -- listing rooms --------------------------------------------------------------------------


async def test_rooms_lists_each_room_holding_messages_with_its_count(store: HistoryStore) -> None:
    assert await store.rooms() == []
    await fill(store, "b", 3)
    await fill(store, "a", 1)
    assert await store.rooms() == [RoomCount("a", 1), RoomCount("b", 3)]
    assert await store.rooms(limit=0) == []
    assert await store.rooms(limit=-1) == []


async def test_rooms_are_in_code_point_order(store: HistoryStore) -> None:
    names = ["b", "a", "B", "é", "z", "a-1", "a_1", "10", "9"]
    for name in names:
        await append(store, name)
    assert [name for name, _ in await listed(store)] == sorted(names)


ROOM_PAGES = [
    # after, limit -> names, out of rooms a..e holding 1..5 messages
    pytest.param("", 2, ["a", "b"], id="first"),
    pytest.param("b", 2, ["c", "d"], id="after-a-room"),
    pytest.param("bz", 2, ["c", "d"], id="after-a-name-between-rooms"),
    pytest.param("d", 5, ["e"], id="last-short"),
    pytest.param("e", 5, [], id="after-last"),
    pytest.param("", 5, ["a", "b", "c", "d", "e"], id="exactly-all"),
    pytest.param("", 100, ["a", "b", "c", "d", "e"], id="all"),
    pytest.param("", 0, [], id="limit-0"),
    pytest.param("", -1, [], id="limit-negative"),
]


@pytest.mark.parametrize(("after", "limit", "expected"), ROOM_PAGES)
async def test_rooms_pages_by_name_after_a_cursor(
    store: HistoryStore, after: str, limit: int, expected: list[str]
) -> None:
    for count, room in enumerate("abcde", start=1):
        await fill(store, room, count)
    counts = {room: count for count, room in enumerate("abcde", start=1)}
    assert await listed(store, after, limit) == [(room, counts[room]) for room in expected]


async def test_paging_rooms_with_cursors_visits_every_room_once(store: HistoryStore) -> None:
    names = [f"room-{i:02}" for i in range(23)]
    for i, name in enumerate(reversed(names)):
        await fill(store, name, 1 + i % 3)
    seen = await every_room(store, page_size=5)
    assert [r.name for r in seen] == names
    assert seen == await store.rooms(limit=100)


async def test_rooms_skip_expired_rooms_and_still_fill_the_page(
    open_history: OpenHistory,
) -> None:
    store = await open_history(Retention(max_messages=3, max_age=timedelta(hours=1)))
    old = now() - timedelta(hours=2)
    await append(store, "a", at=old)  # every message expired
    await append(store, "b")
    await append(store, "c", at=old)
    await append(store, "c")
    await append(store, "c", at=old)  # expired behind a fresh one: the clock stepped back
    await append(store, "d", at=old)
    await fill(store, "e", 5)  # beyond the count limit
    await append(store, "f")
    assert await listed(store, limit=2) == [("b", 1), ("c", 1)]
    assert await listed(store, "c", 2) == [("e", 3), ("f", 1)]
    assert await listed(store) == [("b", 1), ("c", 1), ("e", 3), ("f", 1)]
    # Each count is what a read returns.
    for room, count in await listed(store):
        assert len(await store.read(room)) == count


async def test_concurrent_appends_to_different_rooms(store: HistoryStore) -> None:
    rooms = [f"r{i}" for i in range(5)]
    await asyncio.gather(*(fill(store, room, 20) for room in rooms))
    for room in rooms:
        assert seqs(await store.read(room)) == list(range(1, 21))


async def test_concurrent_appends_to_one_room_are_numbered_in_call_order(
    store: HistoryStore,
) -> None:
    # Each task calls `append` in its first step, in creation order; none waits for another.
    tasks = [asyncio.create_task(append(store, "lobby", f"m{i}")) for i in range(200)]
    tasks += [asyncio.create_task(append(store, "other", f"o{i}")) for i in range(50)]
    results = await asyncio.gather(*tasks)
    assert [r.message.seq for r in results] == list(range(1, 201)) + list(range(1, 51))
    assert [m.text for m in await store.read("lobby", limit=500)] == [f"m{i}" for i in range(200)]
    assert await listed(store) == [("lobby", 200), ("other", 50)]


async def test_concurrent_repeats_of_a_key_store_one_message(store: HistoryStore) -> None:
    t0 = now()
    results = await asyncio.gather(
        *(
            append(store, text=f"try {i}", key="k", at=t0 + timedelta(milliseconds=i))
            for i in range(20)
        )
    )
    first = results[0]
    assert not first.duplicate
    assert results[1:] == [Appended(first.message, duplicate=True)] * 19
    assert await store.read("lobby") == [first.message]


# -- a model of history and resume ----------------------------------------------------------

MODEL_RETENTION = Retention(
    max_messages=4, max_age=timedelta(hours=1), dedup_window=timedelta(seconds=10)
)


class HistoryModel(RuleBasedStateMachine):
    """Appends (some repeating a key, some from a clock that stepped back past `max_age`) to a
    few rooms, against a plain list per room; any `read` must return exactly what the lists
    say is retained.

    Fresh messages are dated from a clock starting 30 minutes ago that only moves forward, by
    seconds, so they are never expired and their keys may or may not still be inside the window;
    stale ones are two hours old, so always expired. Those carry no key: a key's window is
    judged on the appends' own clock, which the model only moves forward.
    """

    def __init__(self) -> None:
        super().__init__()
        self.runner = asyncio.Runner()
        self.store = self.runner.run(open_store(self.new_store_url(), MODEL_RETENTION))
        self.clock = now() - timedelta(minutes=30)
        self.appended: dict[str, list[Message]] = {room: [] for room in self.ROOMS}
        self.keys: dict[tuple[str, str], Message] = {}
        self.ids = itertools.count()

    ROOMS = ("a", "b", "c")
    rooms = st.sampled_from(ROOMS)
    senders = st.sampled_from(["ann", "bob"])

    def new_store_url(self) -> str:
        """A new, empty history of the engine under test (overridden per engine)."""
        raise NotImplementedError

    def teardown(self) -> None:
        self.runner.run(self.store.aclose())
        self.runner.close()

    def retained(self, room: str) -> list[Message]:
        messages = self.appended[room]
        first_kept_seq = len(messages) - MODEL_RETENTION.max_messages + 1
        oldest_kept = now() - MODEL_RETENTION.max_age
        return [m for m in messages if m.seq >= first_kept_seq and m.sent_at >= oldest_kept]

    def _append(self, room: str, sender: str, key: str, sent_at: datetime) -> Appended:
        return self.runner.run(
            self.store.append(
                id=str(next(self.ids)),
                room=room,
                sender=sender,
                text=f"{sender} {key} {sent_at.isoformat()}",
                sent_at=sent_at,
                key=key,
            )
        )

    @rule(
        room=rooms,
        sender=senders,
        key=st.sampled_from(["", "k1", "k2"]),
        seconds=st.integers(0, 8),
    )
    def append(self, room: str, sender: str, key: str, seconds: int) -> None:
        self.clock += timedelta(seconds=seconds)
        original = self.keys.get((sender, key))
        result = self._append(room, sender, key, self.clock)
        if key and original and self.clock - original.sent_at < MODEL_RETENTION.dedup_window:
            assert result == Appended(original, duplicate=True)
            return
        assert not result.duplicate
        assert result.message.seq == len(self.appended[room]) + 1
        assert result.message.sent_at == self.clock
        self.appended[room].append(result.message)
        if key:
            self.keys[sender, key] = result.message

    @rule(room=rooms, sender=senders)
    def append_stale(self, room: str, sender: str) -> None:
        result = self._append(room, sender, "", now() - 2 * MODEL_RETENTION.max_age)
        assert result.message.seq == len(self.appended[room]) + 1
        self.appended[room].append(result.message)

    @rule(room=rooms, after=st.none() | st.integers(-1, 40), limit=st.integers(1, 6))
    def read_after(self, room: str, after: int | None, limit: int) -> None:
        expected = [m for m in self.retained(room) if after is None or m.seq > after][:limit]
        assert self.runner.run(self.store.read(room, after=after, limit=limit)) == expected

    @rule(room=rooms, before=st.none() | st.integers(0, 40), limit=st.integers(1, 6))
    def read_before_newest_first(self, room: str, before: int | None, limit: int) -> None:
        newest = [m for m in reversed(self.retained(room)) if before is None or m.seq < before]
        page = self.runner.run(self.store.read(room, before=before, limit=limit, newest_first=True))
        assert page == newest[:limit]

    def listed(self, after: str = "") -> list[RoomCount]:
        """What `rooms` must list after `after`: every room retaining messages, by name."""
        counts = [RoomCount(room, len(self.retained(room))) for room in sorted(self.ROOMS)]
        return [r for r in counts if r.messages and r.name > after]

    @rule(after=st.sampled_from(["", "a", "a0", "b", "c", "z"]), limit=st.integers(0, 4))
    def rooms_page(self, after: str, limit: int) -> None:
        page = self.runner.run(self.store.rooms(after=after, limit=limit))
        assert page == self.listed(after)[: max(limit, 0)]

    @invariant()
    def positions_and_counts(self) -> None:
        for room in self.ROOMS:
            assert self.runner.run(self.store.last_seq(room)) == len(self.appended[room])
        assert self.runner.run(every_room(self.store, page_size=2)) == self.listed()


def test_history_matches_the_model(store_url: Callable[[], str]) -> None:
    class OnThisEngine(HistoryModel):
        def new_store_url(self) -> str:
            return store_url()

    run_state_machine_as_test(
        OnThisEngine,
        # No explain phase: it traces every line, which makes shrinking a failure very slow.
        settings=settings(
            max_examples=30,
            stateful_step_count=25,
            deadline=None,
            phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],
        ),
    )


async def test_the_memory_engine_forgets_keys_past_one_stamped_far_ahead() -> None:
    """A key stamped a day ahead (a clock stepped back since) held every key made after it in
    memory until its stamp came: forgetting follows the stamps, not the order of arrival."""
    from grpcchat.store.memory import MemoryStore

    store = MemoryStore(Retention(dedup_window=timedelta(minutes=10)))
    await append(store, key="ahead", at=now() + timedelta(days=1))
    start = now() - timedelta(hours=2)  # the clock, back where it belongs
    for n in range(1_000):
        await append(store, key=f"k{n}", at=start + timedelta(seconds=n))
    held = len(store._keys)
    assert held <= 602, held  # the last ten minutes' (one a second), and the one ahead
