"""What the JetStream engine adds to the contract (tests/test_store_contract.py runs that):
one stream shared by several stores, reopening, pruning, and NATS failures as StoreError."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta

import pytest

from grpcchat.core.errors import StoreError
from grpcchat.core.history import Appended, HistoryStore, Retention, RoomCount
from grpcchat.server.engines import open_store

nats = pytest.importorskip("nats", reason="nats-py is not installed")

from grpcchat.store.nats import NatsStore  # noqa: E402

Opener = Callable[..., Awaitable[HistoryStore]]


@pytest.fixture
def stream_url(nats_url: str) -> str:
    return f"{nats_url}?stream=T_{uuid.uuid4().hex}"


@pytest.fixture
async def opener(stream_url: str) -> AsyncIterator[Opener]:
    opened: list[HistoryStore] = []

    async def open_(retention: Retention | None = None, url: str = stream_url) -> HistoryStore:
        store = await open_store(url, retention)
        opened.append(store)
        return store

    yield open_
    for store in opened:
        await store.aclose()


async def append(
    store: HistoryStore, room: str = "lobby", *, key: str = "", at: datetime | None = None
) -> Appended:
    return await store.append(
        id=uuid.uuid4().hex,
        room=room,
        sender="ann",
        text="hi",
        sent_at=at or datetime.now(UTC),
        key=key,
    )


async def held(stream_url: str, room: str = "lobby") -> int:
    """How many messages the stream holds for the room (expired or not)."""
    base, _, query = stream_url.partition("?")
    stream = query.removeprefix("stream=")
    nc = await nats.connect(base)
    try:
        info = await nc.jetstream().stream_info(stream, subjects_filter=f"{stream}.room.>")
        return (info.state.subjects or {}).get(f"{stream}.room.{room}", 0)
    finally:
        await nc.close()


async def test_reopening_a_stream_keeps_its_epoch_and_its_seqs(opener: Opener) -> None:
    first = await opener()
    await append(first)
    await first.aclose()
    again = await opener()
    assert again.epoch == first.epoch
    assert (await append(again)).message.seq == 2


async def test_stores_sharing_a_stream_number_one_room_contiguously(opener: Opener) -> None:
    stores = [await opener() for _ in range(3)]
    results = await asyncio.gather(*(append(s) for s in stores for _ in range(30)))
    assert sorted(r.message.seq for r in results) == list(range(1, 91))
    read = await stores[0].read("lobby", limit=100)
    assert [m.id for m in read] == [
        r.message.id for r in sorted(results, key=lambda r: r.message.seq)
    ]
    assert await stores[1].rooms() == [RoomCount("lobby", 90)]


async def test_a_key_repeated_through_another_store_returns_the_original(
    opener: Opener,
) -> None:
    one, other = await opener(), await opener()
    first = await append(one, key="k")
    assert await append(other, "elsewhere", key="k") == Appended(first.message, duplicate=True)


async def test_pruning_purges_what_nothing_needs_and_keeps_the_latest(
    opener: Opener, stream_url: str
) -> None:
    store = await opener(Retention(max_messages=3, max_age=timedelta(hours=1)))
    assert isinstance(store, NatsStore)
    for _ in range(10):
        await append(store)
    await store.prune("lobby")
    assert await held(stream_url) == 3
    old = datetime.now(UTC) - timedelta(hours=2)
    await append(store, "gone", at=old)
    await append(store, "gone", at=old)
    await store.prune("gone")
    assert await held(stream_url, "gone") == 1  # the latest carries last_seq
    assert await store.last_seq("gone") == 2
    assert [r.name for r in await store.rooms()] == ["lobby"]


async def test_pruning_keeps_a_keyed_message_inside_its_window(
    opener: Opener, stream_url: str
) -> None:
    store = await opener(Retention(max_messages=1))
    assert isinstance(store, NatsStore)
    first = await append(store, key="k")
    for _ in range(3):
        await append(store)
    await store.prune("lobby")
    assert await held(stream_url) == 4  # nothing before the keyed one, nothing after it
    assert await append(store, key="k") == Appended(first.message, duplicate=True)
    assert [m.seq for m in await store.read("lobby")] == [4]


async def test_more_late_messages_than_the_header_lists_are_still_counted_out(
    opener: Opener,
) -> None:
    store = await opener(Retention(max_age=timedelta(hours=1)))
    old = datetime.now(UTC) - timedelta(hours=2)
    await append(store)
    for _ in range(40):  # each behind the fresh one: the clock stepped back
        await append(store, at=old)
    await append(store)
    assert await store.rooms() == [RoomCount("lobby", 2)]
    assert [m.seq for m in await store.read("lobby")] == [1, 42]
    assert [m.seq for m in await store.read("lobby", newest_first=True, limit=1)] == [42]


async def test_room_names_that_subjects_cannot_hold_round_trip(opener: Opener) -> None:
    store = await opener()
    names = ["a.b", "*", ">", "with space", "%41", "é"]
    for name in names:
        await append(store, name)
    assert [r.name for r in await store.rooms()] == sorted(names)
    assert [(await store.read(name))[0].room for name in names] == names


async def test_a_closed_store_raises_store_error(opener: Opener) -> None:
    store = await opener()
    await store.aclose()
    with pytest.raises(StoreError, match="closed"):
        await append(store)
    with pytest.raises(StoreError, match="closed"):
        await store.read("lobby")
    await store.aclose()


@pytest.mark.parametrize(
    "url",
    ["nats://127.0.0.1:4222?colour=blue", "nats://127.0.0.1:4222?stream=a.b", "nats://?x"],
)
async def test_a_malformed_url_is_a_store_error(url: str) -> None:
    with pytest.raises(StoreError):
        await open_store(url)


async def test_an_unreachable_nats_is_a_store_error() -> None:
    with pytest.raises(StoreError, match="cannot reach NATS"):
        await open_store("nats://127.0.0.1:1")
