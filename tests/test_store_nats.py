"""What the JetStream engine adds to the contract (tests/test_store_contract.py runs that):
one stream shared by several stores, reopening, pruning, and NATS failures as StoreError."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from grpcchat.core.errors import AlreadyExists, NotFound, StoreError
from grpcchat.core.gated import GatedDelivery
from grpcchat.core.history import Appended, HistoryStore, Retention, RoomCount
from grpcchat.core.models import Envelope, Message, Reaction, Relation, RelationKind
from grpcchat.server.engines import open_store

nats = pytest.importorskip("nats", reason="nats-py is not installed")

from nats.js.errors import NotFoundError as NoMessage  # noqa: E402

from grpcchat.store.nats import NatsStore, appender, codec, reader  # noqa: E402
from tests import test_store_conversations as conversations  # noqa: E402
from tests.natsfixture import NatsNode  # noqa: E402
from tests.test_store_contract import append  # noqa: E402

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


async def test_a_nats_that_refuses_the_credentials_is_said_to(tmp_path: Path) -> None:
    """It was "cannot reach NATS ... within 5s", and the operator looked for a network fault
    while nats-py had been told 'Authorization Violation' all along. (The local nats-server of
    --workers wants its token.)"""
    from grpcchat.core.urls import redacted_url
    from grpcchat.server.localnats import LocalNats

    async with LocalNats(tmp_path / "nats") as nats:
        address = nats.url.rpartition("@")[2]
        url = f"nats://wrong@{address}"
        with pytest.raises(StoreError) as refused:
            await open_store(url)
        assert str(refused.value) == (
            f"NATS at {redacted_url(url)} refused the connection: nats: 'Authorization "
            "Violation' "
            "(check the user and password, or the token, in the URL)"
        )
        store = await open_store(nats.url)  # with the token
        await store.aclose()


async def test_a_nats_without_jetstream_is_said_so(tmp_path: Path) -> None:
    node = NatsNode(tmp_path, "plain", jetstream=False)
    node.start()
    try:
        with pytest.raises(StoreError, match="JetStream is not enabled there"):
            await open_store(node.url)
    finally:
        node.stop()


async def test_subjects_another_stream_takes_are_the_reason_given(nats_url: str) -> None:
    """Creating the history's stream is refused; the reason was lost to "stream not found"."""
    stream = f"CHAT_{uuid.uuid4().hex[:8]}"
    connection = await nats.connect(nats_url)
    try:
        js = connection.jetstream()
        await js.add_stream(name=f"OTHER_{stream}", subjects=[f"{stream}.>"])
        with pytest.raises(StoreError, match="subjects overlap"):
            await open_store(f"{nats_url}?stream={stream}")
        await js.delete_stream(f"OTHER_{stream}")
    finally:
        await connection.close()


async def test_while_nats_is_down_reads_fail_at_once_and_closing_still_closes(
    restartable_nats: NatsNode,
) -> None:
    store = await open_store(f"{restartable_nats.url}?stream=T_{uuid.uuid4().hex}")
    try:
        await append(store)
        await asyncio.to_thread(restartable_nats.stop)
        deadline = time.monotonic() + 10
        while store.connected:  # type: ignore[attr-defined]
            assert time.monotonic() < deadline, "the store did not notice NATS stopping"
            await asyncio.sleep(0.05)
        reads: list[Callable[[], Awaitable[object]]] = [
            lambda: store.read("lobby"),
            lambda: store.last_seq("lobby"),
            lambda: store.rooms(),
            lambda: store.read_marker("ann", "lobby"),
            lambda: store.unread("ann", ["lobby"]),
        ]
        for read in reads:  # refused, not held for nats-py's request timeout (5 s)
            with pytest.raises(StoreError, match="no connection to NATS"):
                await asyncio.wait_for(read(), 1)
    finally:
        # nats-py still holds what the outage left unsent: its close fails to send it.
        await asyncio.wait_for(store.aclose(), 30)
    with pytest.raises(StoreError, match="closed"):
        await store.read("lobby")


async def test_closing_while_nats_does_not_answer_is_bounded(restartable_nats: NatsNode) -> None:
    """NATS frozen (a partition: no reset, no answers) with an append in flight: closing takes
    CLOSE_TIMEOUT and a moment, not the sum of every step's own timeout (14 s)."""
    from grpcchat.store.nats.store import CLOSE_TIMEOUT, LAST_CLOSE_TIMEOUT

    store = await open_store(f"{restartable_nats.url}?stream=T_{uuid.uuid4().hex}")
    assert restartable_nats.process is not None
    await append(store)
    restartable_nats.process.send_signal(signal.SIGSTOP)
    try:
        in_flight = asyncio.create_task(append(store, text="unanswered"))
        await asyncio.sleep(0.2)
        started = time.monotonic()
        await asyncio.wait_for(store.aclose(), 30)
        took = time.monotonic() - started
        assert took < CLOSE_TIMEOUT + LAST_CLOSE_TIMEOUT + 1.0, took
        with contextlib.suppress(StoreError):
            await asyncio.wait_for(in_flight, 15)
    finally:
        restartable_nats.process.send_signal(signal.SIGCONT)


def test_a_stream_message_with_an_impossible_time_is_not_ours() -> None:
    body = {"id": "x", "room": "lobby", "sender": "ann", "text": "hi", "at": 1e400}
    with pytest.raises(StoreError, match="not a grpcchat message"):
        codec.decode(json.dumps(body).encode(), {codec.SEQ: "1"}, 7, None, "epoch")


async def test_the_rooms_whose_last_message_is_kept_are_bounded(
    opener: Opener, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(appender, "MAX_HEADS", 3)
    store = await opener()
    for room in ("r1", "r2", "r3", "r4", "r5"):
        await append(store, room)
    heads = store._appender._heads  # type: ignore[attr-defined]
    assert list(heads) == ["r3", "r4", "r5"]  # the least recently appended to went first
    assert (await append(store, "r1")).message.seq == 2  # read from the stream again
    assert list(heads) == ["r4", "r5", "r1"]


# -- conversations: relations, erasing, read markers across stores --------------------------


async def post(store: HistoryStore, text: str = "", **how: Any) -> Message:
    """`test_store_conversations.post`, with no text unless given (a relation carries none)."""
    return await conversations.post(store, text, **how)


async def raw_texts(stream_url: str, room: str = "lobby") -> list[str]:
    """The `text` of every message the stream holds for the room, read with JetStream's API."""
    base, _, query = stream_url.partition("?")
    stream = query.removeprefix("stream=")
    nc = await nats.connect(base)
    texts: list[str] = []
    try:
        js = nc.jetstream()
        seq = 1
        while True:
            try:
                raw = await js.get_msg(stream, seq=seq, subject=f"{stream}.room.{room}", next=True)
            except NoMessage:
                return texts
            texts.append(json.loads(raw.data or b"{}")["text"])
            seq = (raw.seq or 0) + 1
    finally:
        await nc.close()


async def test_an_edit_through_one_store_is_current_state_on_another(opener: Opener) -> None:
    one, other = await opener(), await opener()
    first = await post(one, "helo")
    assert [m.text for m in await other.read("lobby")] == ["helo"]  # indexed there now
    edit = await post(one, "hello", relation=Relation(RelationKind.EDIT, first.id))
    await post(one, "👍", sender="bob", relation=Relation(RelationKind.REACT, first.id, "👍"))
    shown = await other.read("lobby")
    assert shown[0].text == "hello"
    assert shown[0].edited_at == edit.sent_at
    assert shown[0].reactions == (Reaction("👍", ("bob",)),)
    assert [m.relation.kind if m.relation else None for m in shown] == [
        None,
        RelationKind.EDIT,
        RelationKind.REACT,
    ]
    # The other store judges relations by the same state: a second edit counts as the second.
    await post(other, "hello!", relation=Relation(RelationKind.EDIT, first.id))
    assert (await one.read("lobby", limit=1))[0].text == "hello!"


async def test_a_delete_erases_the_text_from_the_stream_and_keeps_a_tombstone(
    opener: Opener, stream_url: str
) -> None:
    one, other = await opener(), await opener()
    question = await post(one, "who?")
    secret = await post(one, "my secret", reply_to=question.id, action=True)
    await post(one, "my other secret", relation=Relation(RelationKind.EDIT, secret.id))
    await post(one, "not secret")
    await post(one, sender="bob", relation=Relation(RelationKind.REACT, secret.id, "👀"))
    await post(one, relation=Relation(RelationKind.DELETE, secret.id))
    assert await raw_texts(stream_url) == ["who?", "not secret", "", ""]
    for store in (one, other):  # the other builds its index after the erasing
        shown = await store.read("lobby")
        assert [m.seq for m in shown] == [1, 2, 3, 4, 5, 6]
        tombstone = shown[1]
        assert (tombstone.id, tombstone.text, tombstone.deleted) == (secret.id, "", True)
        assert (tombstone.sender, tombstone.sent_at) == (secret.sender, secret.sent_at)
        assert (tombstone.reply_to, tombstone.action) == (question.id, True)
        assert tombstone.reactions == ()
        assert tombstone.edited_at == shown[2].sent_at
        assert (shown[2].text, shown[2].relation) == ("", Relation(RelationKind.EDIT, secret.id))
        assert [m.seq for m in await store.read("lobby", after=1, before=4)] == [2, 3]
        newest = await store.read("lobby", newest_first=True, limit=5)
        assert [m.seq for m in newest] == [6, 5, 4, 3, 2]
        assert await store.rooms() == [RoomCount("lobby", 6)]
        with pytest.raises(NotFound):
            await post(store, relation=Relation(RelationKind.DELETE, secret.id))
        with pytest.raises(NotFound):
            await post(store, "again", relation=Relation(RelationKind.EDIT, secret.id))
    # A tombstone may still be replied to.
    await post(other, "it was deleted", reply_to=secret.id)


async def test_counts_hold_when_the_first_entries_are_erased(opener: Opener) -> None:
    one = await opener(Retention(max_messages=5))
    first, second = await post(one, "a"), await post(one, "b")
    await post(one, relation=Relation(RelationKind.DELETE, first.id))
    await post(one, relation=Relation(RelationKind.DELETE, second.id))
    for store in (one, await opener(Retention(max_messages=5))):
        assert await store.rooms() == [RoomCount("lobby", 4)]
        assert len(await store.read("lobby")) == 4
    for _ in range(3):  # the window moves past the tombstones
        await post(one, "more")
    assert [m.seq for m in await one.read("lobby")] == [3, 4, 5, 6, 7]
    assert await one.rooms() == [RoomCount("lobby", 5)]
    with pytest.raises(NotFound):
        await post(one, relation=Relation(RelationKind.REACT, first.id, "👍"))


async def test_a_change_to_a_message_another_store_just_appended_is_judged_on_the_stream(
    opener: Opener,
) -> None:
    one, other = await opener(), await opener()  # `one` does not follow the feed
    await post(one, "first")  # `one` now holds the room's last entry as a hint
    target = await post(other, "from the other store", sender="bob")
    reaction = Relation(RelationKind.REACT, target.id, "👍")
    assert (await post(one, relation=reaction)).seq == 3  # not NotFound against the hint
    assert (await post(one, "re", reply_to=target.id)).seq == 4
    with pytest.raises(NotFound):  # a target that is not there at all is still refused
        await post(one, "re", reply_to="no-such-id")


async def test_concurrent_relations_through_two_stores_are_judged_in_order(
    opener: Opener,
) -> None:
    one, other = await opener(), await opener()
    target = await post(one, "party")
    react = Relation(RelationKind.REACT, target.id, "🎉")
    results = await asyncio.gather(
        *(post(store, sender="bob", relation=react) for store in (one, other) for _ in range(3)),
        return_exceptions=True,
    )
    assert sum(isinstance(r, Message) for r in results) == 1
    assert all(isinstance(r, (Message, AlreadyExists)) for r in results)
    delete = Relation(RelationKind.DELETE, target.id)
    deletes = await asyncio.gather(
        post(one, relation=delete), post(other, relation=delete), return_exceptions=True
    )
    assert sorted(type(r).__name__ for r in deletes) == ["Message", "NotFound"]
    shown = await other.read("lobby")
    assert [m.seq for m in shown] == [1, 2, 3]
    assert shown[0].deleted


async def test_a_repeated_key_returns_the_original_relation_without_judging_it_again(
    opener: Opener,
) -> None:
    one, other = await opener(), await opener()
    target = await post(one, "oops")
    delete = Relation(RelationKind.DELETE, target.id)
    first = await post(one, relation=delete, key="k")
    again = await other.append(
        id=uuid.uuid4().hex,
        room="lobby",
        sender="ann",
        text="",
        sent_at=datetime.now(UTC),
        key="k",
        relation=delete,
    )
    assert again == Appended(first, duplicate=True)
    keyed = await post(one, "erased soon", key="m")
    await post(one, relation=Relation(RelationKind.DELETE, keyed.id))
    repeat = await other.append(
        id=uuid.uuid4().hex,
        room="lobby",
        sender="ann",
        text="x",
        sent_at=datetime.now(UTC),
        key="m",
    )
    assert repeat.duplicate
    assert (repeat.message.id, repeat.message.deleted, repeat.message.text) == (keyed.id, True, "")


async def test_entries_stored_before_relations_existed_still_read(
    opener: Opener, stream_url: str
) -> None:
    base, _, query = stream_url.partition("?")
    stream = query.removeprefix("stream=")
    store = await opener()  # makes the stream
    nc = await nats.connect(base)
    try:
        body = {"id": "old", "room": "lobby", "sender": "ann", "text": "from before", "at": 1}
        at = str(codec.to_us(datetime.now(UTC)))
        body["at"] = int(at)
        await nc.jetstream().publish(
            f"{stream}.room.lobby",
            json.dumps(body).encode(),
            headers={"Chat-Seq": "1", "Chat-Latest": at},
        )
    finally:
        await nc.close()
    await post(store, "edited", relation=Relation(RelationKind.EDIT, "old"))
    shown = await store.read("lobby")
    assert (shown[0].id, shown[0].text, shown[0].reply_to) == ("old", "edited", "")
    assert await store.rooms() == [RoomCount("lobby", 2)]


async def test_read_markers_are_shared_by_stores_and_move_forward_only(opener: Opener) -> None:
    one, other = await opener(), await opener()
    for text in ("a", "b", "c"):
        await post(one, text, sender="bob")
    await post(one, "mine")
    assert await one.mark_read("ann", "lobby", 1) == 1
    assert await other.read_marker("ann", "lobby") == 1
    # `other` has not indexed the room: it counts what the stream holds after the marker.
    assert await other.unread("ann", ["lobby", "empty"]) == {"lobby": 3, "empty": 0}
    await other.read("lobby")
    assert await other.unread("ann", ["lobby", "empty"]) == {"lobby": 2, "empty": 0}
    assert await other.mark_read("ann", "lobby", 0) == 1  # never back
    assert await other.mark_read("ann", "lobby", 99) == 4  # never past the last seq
    assert await one.unread("ann", ["lobby"]) == {"lobby": 0}
    moves = await asyncio.gather(
        *(s.mark_read("cy", "lobby", n) for n in (1, 2, 3, 4) for s in (one, other))
    )
    assert max(moves) == 4
    assert await one.read_marker("cy", "lobby") == 4
    assert await one.read_marker("nobody", "lobby") == 0


async def test_a_gap_an_erased_entry_leaves_in_the_feed_is_filled_with_its_tombstone(
    opener: Opener,
) -> None:
    store = await opener()
    await post(store, "before")
    secret = await post(store, "gone soon")
    delete = await post(store, relation=Relation(RelationKind.DELETE, secret.id))
    delivered: list[Message] = []
    arrived = asyncio.Event()

    def fan_out(room: str, envelope: Envelope) -> None:
        assert isinstance(envelope.event, Message)
        delivered.append(envelope.event)
        if len(delivered) == 2:
            arrived.set()

    gated = GatedDelivery(store, fan_out, lambda room: None)
    gated.open("lobby")
    gated.start("lobby", 2)  # a join read up to seq 1
    gated.receive(delete)  # the feed never saw seq 2: erased before it came by
    async with asyncio.timeout(5):
        await arrived.wait()
    assert [(m.seq, m.deleted, m.text) for m in delivered] == [(2, True, ""), (3, False, "")]


async def test_the_feed_keeps_another_stores_index_current(opener: Opener) -> None:
    one, other = await opener(), await opener()
    assert isinstance(other, NatsStore)
    target = await post(one, "first")
    assert [m.text for m in await other.read("lobby")] == ["first"]  # indexed there
    seen: list[Message] = []
    followed = asyncio.Event()
    three = asyncio.Event()

    def deliver(message: Message) -> None:
        seen.append(message)
        if len(seen) == 3:
            three.set()

    async def following() -> None:
        followed.set()

    feed = asyncio.create_task(other.follow(deliver, following))
    try:
        async with asyncio.timeout(5):
            await followed.wait()
            await post(one, "second", relation=Relation(RelationKind.EDIT, target.id))
            await post(one, sender="bob", relation=Relation(RelationKind.REACT, target.id, "👍"))
            await post(one, "more")
            await three.wait()
        # The feed brought the index up to date, without reading the room again.
        state = other._indexes.peek("lobby")
        assert (state.last.seq if state and state.last else 0) == 4
        # And appends are judged by it: bob cannot react twice.
        with pytest.raises(AlreadyExists):
            await post(other, sender="bob", relation=Relation(RelationKind.REACT, target.id, "👍"))
        assert (await other.read("lobby", limit=1))[0].text == "second"
    finally:
        feed.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await feed


async def test_text_a_delete_left_in_the_stream_is_hidden_and_erased_by_a_later_read(
    opener: Opener, stream_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    one, other = await opener(), await opener()
    assert isinstance(one, NatsStore)
    secret = await post(one, "my secret")
    await post(one, "my edited secret", relation=Relation(RelationKind.EDIT, secret.id))

    async def dies_before_erasing(gone: object) -> None:
        pass

    monkeypatch.setattr(one._eraser, "erase", dies_before_erasing)
    await post(one, relation=Relation(RelationKind.DELETE, secret.id))
    assert await raw_texts(stream_url) == ["my secret", "my edited secret", ""]
    shown = await other.read("lobby")
    assert [(m.text, m.deleted) for m in shown] == [("", True), ("", False), ("", False)]
    # The read handed them to the maintenance job: erasing (again) is harmless.
    assert isinstance(other, NatsStore)
    await other._eraser.flush()
    assert not other._eraser.owed
    assert await raw_texts(stream_url) == [""]
    assert await other.read("lobby") == shown


@pytest.mark.parametrize("few", [0, 1_000], ids=["one consumer", "a request each"])
async def test_an_index_built_from_the_stream_shows_what_the_writers_shows(
    opener: Opener, monkeypatch: pytest.MonkeyPatch, few: int
) -> None:
    """A store that did not write a room builds its index from a run of the room's retained
    entries (through one consumer when the run is long, `reader.FEW`), and later reads on from
    its last entry: either way it shows, and judges, what the writer's index does."""
    monkeypatch.setattr(reader, "FEW", few)
    retention = Retention(max_messages=60)
    writer, fresh = await opener(retention), await opener(retention)

    async def posts(count: int) -> list[Message]:
        made = []
        for n in range(count):
            made.append(await post(writer, f"m{n}"))
            await post(writer, f"elsewhere {n}", room="other")
        return made

    async def same_as_the_writer() -> None:
        expected = await writer.read("lobby", limit=1_000)
        assert await fresh.read("lobby", limit=1_000) == expected
        assert await fresh.unread("zed", ["lobby"]) == await writer.unread("zed", ["lobby"])

    early = await posts(40)
    await post(writer, "edited", relation=Relation(RelationKind.EDIT, early[30].id))
    await post(writer, sender="bob", relation=Relation(RelationKind.REACT, early[31].id, "👍"))
    await post(writer, relation=Relation(RelationKind.DELETE, early[32].id))  # a gap
    await same_as_the_writer()  # built
    late = await posts(50)  # past the count: the window moves on
    await post(writer, "again", relation=Relation(RelationKind.EDIT, late[0].id))
    await post(writer, relation=Relation(RelationKind.DELETE, late[1].id))
    await post(writer, sender="bob", relation=Relation(RelationKind.REACT, late[2].id, "👍"))
    await same_as_the_writer()  # read on
    with pytest.raises(AlreadyExists):
        await post(fresh, sender="bob", relation=Relation(RelationKind.REACT, late[2].id, "👍"))


async def test_unread_of_a_room_not_indexed_counts_what_the_stream_holds_after_the_marker(
    opener: Opener,
) -> None:
    """Without the room's index, `unread` reads no entries: the stream's first and last
    messages of the room bound what is retained after the marker (relations and the user's
    own included); once the room is indexed, the count is exact."""
    retention = Retention(max_messages=4, max_age=timedelta(hours=1))
    writer, other = await opener(retention), await opener(retention)
    old = datetime.now(UTC) - timedelta(hours=2)
    await append(writer, "aged", at=old)
    assert await other.unread("zed", ["aged"]) == {"aged": 0}  # everything expired
    for _ in range(2):
        await append(writer, at=old)
    first = await post(writer, "fresh")
    await post(writer, "mine", sender="zed")
    await post(writer, relation=Relation(RelationKind.REACT, first.id, "👍"), sender="bob")
    await writer.prune("lobby")  # the expired prefix goes: the window was 3..6, now 4..6
    assert await other.unread("zed", ["lobby"]) == {"lobby": 3}
    assert await other.mark_read("zed", "lobby", 4) == 4
    assert await other.unread("zed", ["lobby"]) == {"lobby": 1}  # the reaction
    await other.read("lobby")  # indexed: exact
    assert await other.unread("zed", ["lobby"]) == {"lobby": 0}
    assert await writer.unread("zed", ["lobby"]) == {"lobby": 0}  # its relation indexed it
    assert await other.unread("nobody", ["lobby"]) == {"lobby": 2}


def markers_stream(stream_url: str) -> str:
    return f"{stream_url.partition('?stream=')[2]}_READ"


async def test_the_markers_stream_is_bounded_like_the_retention(
    opener: Opener, stream_url: str
) -> None:
    """A markers stream made before markers had limits is given them; the cap is JetStream's,
    least recently moved first."""
    stream = markers_stream(stream_url)
    nc = await nats.connect(stream_url.partition("?")[0])
    try:
        js = nc.jetstream()
        prefix = stream.removesuffix("_READ")
        await js.add_stream(
            name=stream, subjects=[f"{prefix}.read.>"], max_msgs_per_subject=1, allow_direct=True
        )
        store = await opener(Retention(max_age=timedelta(days=2), max_markers=2))
        config = (await js.stream_info(stream)).config
        assert (config.max_age, config.max_msgs, config.discard) == (2 * 86_400, 2, "old")
        for room in ("a", "b"):
            await append(store, room)
            await append(store, room)
        await store.mark_read("ann", "a", 1)
        await store.mark_read("ann", "b", 1)
        await store.mark_read("ann", "a", 2)
        await store.mark_read("bob", "a", 1)  # one beyond: ann's in b, the least recently moved
        assert (await js.stream_info(stream)).state.messages == 2
        assert [await store.read_marker("ann", room) for room in ("a", "b")] == [2, 0]
        # Opened under another retention: the stream follows it.
        await opener(Retention(max_age=timedelta(milliseconds=1), max_markers=5))
        config = (await js.stream_info(stream)).config
        assert (config.max_age, config.max_msgs) == (1.0, 5)  # JetStream's floor is 100 ms
    finally:
        await nc.close()


async def test_indexes_keep_a_running_total_of_their_entries(opener: Opener) -> None:
    store = await opener()
    assert isinstance(store, NatsStore)
    states = store._indexes._states
    states._max_indexed = 12
    for room in "abcde":
        for _ in range(5):
            await append(store, room)
        await store.read(room)  # indexes it
        held = states._rooms.values()
        assert states.entries == sum(len(state) for state in held)
    # The bound holds when an index is taken, before it grows: the least recently used went.
    assert list(states._rooms) == ["c", "d", "e"]
    await store.read("a")  # indexed again: c goes
    assert list(states._rooms) == ["d", "e", "a"]
    assert states.entries == 15
