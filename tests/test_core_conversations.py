"""Conversations in the hub, without gRPC: relations posted through the room's chain, the
checks a relation or reply must pass before the store sees it, typing notices and read markers.

Readers are tasks iterating `session.batches()` (see tests/test_core_overload.py); every wait is
bounded and waits for a marker, never for silence.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from grpcchat.core.errors import (
    InvalidInput,
    LimitExceeded,
    NotFound,
    PermissionDenied,
)
from grpcchat.core.hub import Hub
from grpcchat.core.models import (
    Envelope,
    Event,
    Message,
    Reaction,
    ReadMarker,
    Relation,
    RelationKind,
    RoomJoined,
    Typing,
)
from grpcchat.core.session import Session
from grpcchat.core.typists import BURST, EXPIRES_IN
from grpcchat.server.framing import each_chat_message
from tests.test_core_overload import Reader, make_hub, readers

__all__ = ["readers"]  # a fixture, used by name

EDIT, DELETE = RelationKind.EDIT, RelationKind.DELETE
REACT, UNREACT = RelationKind.REACT, RelationKind.UNREACT


def typing_of(events: list[Event]) -> list[Typing]:
    return [e for e in events if isinstance(e, Typing)]


def markers_of(events: list[Event]) -> list[ReadMarker]:
    return [e for e in events if isinstance(e, ReadMarker)]


@pytest.fixture
def hub() -> Hub:
    return make_hub()


async def joined(hub: Hub, session: Session, reader: Reader, room: str = "lobby") -> None:
    await hub.join(session, room)
    await reader.wait_joined(room)


# -- relations ---------------------------------------------------------------------------------


async def test_relations_are_delivered_live_in_order_and_counted_apart(
    hub: Hub, readers: Callable[..., Reader]
) -> None:
    async with hub.connect("alice") as alice, hub.connect("bob") as bob:
        follower = readers(bob)
        await joined(hub, alice, readers(alice))
        await joined(hub, bob, follower)
        first = (await hub.post("alice", "helo")).message
        reply = (await hub.post("bob", "hi!", reply_to=first.id)).message
        await hub.post("alice", "hello", relation=Relation(EDIT, first.id))
        await hub.post("bob", "", relation=Relation(REACT, first.id, "👍"))
        await hub.post("bob", "", relation=Relation(UNREACT, first.id, "👍"))
        await hub.post("bob", "", relation=Relation(REACT, reply.id, "🎉"))
        await hub.post("bob", "", relation=Relation(DELETE, reply.id))
        await hub.post("alice", "marker")
        await follower.wait_for_text("marker")

    live = [e for e in follower.events if isinstance(e, Message)]
    assert [m.seq for m in live] == list(range(1, 9))
    assert live[1].reply_to == first.id
    assert live[1].relation is None
    kinds = [m.relation.kind if m.relation else None for m in live]
    assert kinds == [None, None, EDIT, REACT, UNREACT, REACT, DELETE, None]
    assert live[2].text == "hello"
    assert live[3].relation == Relation(REACT, first.id, "👍")
    assert live[6].text == ""
    # Messages (replies included) and relations are counted apart.
    assert hub.stats.accepted == 3
    assert hub.stats.relations == {"edit": 1, "delete": 1, "react": 2, "unreact": 1}

    # History: current state, and the relation entries.
    history = await hub.history("lobby")
    assert [m.seq for m in history] == list(range(1, 9))
    assert history[0].text == "hello"
    assert history[0].edited_at is not None
    assert history[0].reactions == ()
    assert history[1].deleted
    assert history[1].text == ""
    assert history[1].reply_to == first.id


async def test_the_article_stream_frames_no_relation_and_no_notice() -> None:
    message = Message("a", "lobby", "alice", "hi", datetime.now(UTC), 1)
    edit = Message("b", "lobby", "alice", "hey", datetime.now(UTC), 2, relation=Relation(EDIT, "a"))
    batch = [Envelope(message), Envelope(edit), Envelope(Typing("lobby", "bob", True, 6.0))]
    assert len(each_chat_message(batch)) == 1


@pytest.mark.parametrize(
    ("text", "relation", "kwargs", "error", "says"),
    [
        ("", Relation(EDIT, "x" * 32), {}, InvalidInput, "must not be empty"),
        ("\x1b[2J", Relation(EDIT, "x" * 32), {}, InvalidInput, "control characters"),
        ("gone", Relation(DELETE, "x" * 32), {}, InvalidInput, "carries no text"),
        ("+1", Relation(REACT, "x" * 32, "👍"), {}, InvalidInput, "carries no text"),
        ("", Relation(REACT, "x" * 32, ""), {}, InvalidInput, "needs an emoji"),
        ("", Relation(REACT, "x" * 32, "thumbs up"), {}, InvalidInput, "blanks"),
        ("", Relation(UNREACT, "x" * 32, "e" * 65), {}, InvalidInput, "65 bytes"),
        ("", Relation(REACT, "x" * 32, "\u202e👍"), {}, InvalidInput, "text-direction"),
        # What shows as nothing: a lone joiner, variation selector or combining mark, a filler.
        ("", Relation(REACT, "x" * 32, "\u200d"), {}, InvalidInput, "start with a joiner"),
        ("", Relation(REACT, "x" * 32, "\ufe0f"), {}, InvalidInput, "start with a joiner"),
        ("", Relation(REACT, "x" * 32, "\u0301+"), {}, InvalidInput, "start with a joiner"),
        ("", Relation(REACT, "x" * 32, "\u3164"), {}, InvalidInput, "blanks"),
        ("", Relation(REACT, "x" * 32, "👍"), {"action": True}, InvalidInput, "not an action"),
        ("", Relation(DELETE, "x" * 32, "👍"), {}, InvalidInput, "takes no emoji"),
        ("", Relation(DELETE, ""), {}, InvalidInput, "its id is empty"),
        ("", Relation(DELETE, "x" * 65), {}, InvalidInput, "is not a message id"),
        ("", Relation(DELETE, "x" * 32), {"reply_to": "y" * 32}, InvalidInput, "not a reply"),
        ("", Relation(DELETE, "x" * 32), {"recipient": "bob"}, NotFound, "direct messages"),
        ("hi", None, {"recipient": "bob", "reply_to": "y" * 32}, InvalidInput, "direct"),
        ("hi", None, {"reply_to": "bad\x00id"}, InvalidInput, "not a message id"),
    ],
)
async def test_what_a_relation_or_reply_must_look_like(
    hub: Hub,
    text: str,
    relation: Relation | None,
    kwargs: dict[str, Any],
    error: type[Exception],
    says: str,
) -> None:
    async with hub.connect("bob"):  # a recipient that is there
        with pytest.raises(error, match=says):
            await hub.post("alice", text, relation=relation, **kwargs)
    assert await hub.history("lobby") == []


async def test_the_store_decides_what_a_target_allows(hub: Hub) -> None:
    bobs = (await hub.post("bob", "mine")).message
    with pytest.raises(PermissionDenied, match="only bob"):
        await hub.post("alice", "yours now", relation=Relation(EDIT, bobs.id))
    with pytest.raises(NotFound):
        await hub.post("alice", "", relation=Relation(REACT, "0" * 32, "👍"))
    other = (await hub.post("bob", "elsewhere", room="ops")).message
    with pytest.raises(NotFound):
        await hub.post("bob", "", room="lobby", relation=Relation(DELETE, other.id))
    with pytest.raises(NotFound):
        await hub.post("bob", "re", reply_to=other.id)
    # Reactions are anyone's; nothing refused took a seq.
    reacted = await hub.post("alice", "", relation=Relation(REACT, bobs.id, "👍"))
    assert reacted.message.seq == 2
    [current, _] = await hub.history("lobby")
    assert current.reactions == (Reaction("👍", ("alice",)),)


async def test_relations_count_against_the_message_rate() -> None:
    hub = make_hub(rate=0.01, burst=2)
    first = (await hub.post("alice", "one")).message
    await hub.post("alice", "", relation=Relation(REACT, first.id, "👍"))
    with pytest.raises(LimitExceeded, match="slow down"):
        await hub.post("alice", "", relation=Relation(UNREACT, first.id, "👍"))


# -- typing ------------------------------------------------------------------------------------


async def test_typing_reaches_the_others_not_the_typist_and_stops(
    hub: Hub, readers: Callable[..., Reader]
) -> None:
    async with hub.connect("alice") as alice, hub.connect("bob") as bob:
        mine, theirs = readers(alice), readers(bob)
        await joined(hub, alice, mine)
        await joined(hub, bob, theirs)
        hub.typing(alice, "lobby", True)
        await theirs.wait_for(lambda: len(typing_of(theirs.events)) == 1)
        hub.typing(alice, "lobby", False)
        await theirs.wait_for(lambda: len(typing_of(theirs.events)) == 2)
        # A stop that ends nothing tells nobody; the marker shows nothing else came.
        hub.typing(alice, "lobby", False)
        await hub.post("carol", "marker")
        await theirs.wait_for_text("marker")
        await mine.wait_for_text("marker")

    started, stopped = typing_of(theirs.events)
    assert started == Typing("lobby", "alice", True, EXPIRES_IN)
    assert stopped == Typing("lobby", "alice", False, EXPIRES_IN)
    assert typing_of(mine.events) == []


async def test_typing_needs_the_room_and_is_rate_limited(
    hub: Hub, readers: Callable[..., Reader]
) -> None:
    async with hub.connect("alice") as alice:
        with pytest.raises(NotFound, match="not in #lobby"):
            hub.typing(alice, "lobby", True)
        await joined(hub, alice, readers(alice))
        with pytest.raises(InvalidInput):
            hub.typing(alice, "No Such Room", True)
        for _ in range(int(BURST)):
            hub.typing(alice, "lobby", True)
        with pytest.raises(LimitExceeded, match="typing notices") as refused:
            hub.typing(alice, "lobby", True)
        assert refused.value.retry_after is not None
        assert refused.value.retry_after > 0
        # Stopping is never refused: it ends a notice whose start was counted.
        hub.typing(alice, "lobby", False)


async def test_leaving_or_going_away_while_typing_stops_the_notice(
    hub: Hub, readers: Callable[..., Reader]
) -> None:
    async with hub.connect("bob") as bob:
        theirs = readers(bob)
        await joined(hub, bob, theirs)
        async with hub.connect("alice") as alice:
            mine = readers(alice)
            await joined(hub, alice, mine)
            hub.typing(alice, "lobby", True)
            await hub.leave(alice, "lobby")
            await theirs.wait_for(lambda: len(typing_of(theirs.events)) == 2)
            mine.events.clear()
            await joined(hub, alice, mine)
            hub.typing(alice, "lobby", True)
            await theirs.wait_for(lambda: len(typing_of(theirs.events)) == 3)
        # The session closed while typing.
        await theirs.wait_for(lambda: len(typing_of(theirs.events)) == 4)
    assert [t.active for t in typing_of(theirs.events)] == [True, False, True, False]


async def test_typing_never_evicts_and_skips_a_half_full_queue() -> None:
    hub = make_hub(queue_size=4)
    async with hub.connect("alice") as alice, hub.connect("bob") as bob:
        await hub.join(alice, "lobby")
        await hub.join(bob, "lobby")
        bob_reader = Reader(bob)
        await bob_reader.step()  # RoomJoined
        await hub.post("carol", "one")
        await hub.post("carol", "two")  # bob's queue is half full (it reads nothing)
        for _ in range(int(BURST)):
            hub.typing(alice, "lobby", True)
        assert not bob.closed
        await hub.post("carol", "three")
        batch: list[Event] = []
        while len([e for e in batch if isinstance(e, Message)]) < 3:
            batch += await bob_reader.step()
        assert typing_of(batch) == []
        await bob_reader.stop()


# -- read markers ------------------------------------------------------------------------------


async def test_a_marker_is_told_to_the_users_other_sessions_in_the_room(
    hub: Hub, readers: Callable[..., Reader]
) -> None:
    async with (
        hub.connect("alice", authenticated=True) as one,
        hub.connect("alice", authenticated=True) as two,
        hub.connect("alice", authenticated=True) as elsewhere,
    ):
        first, second, third = readers(one), readers(two), readers(elsewhere)
        await joined(hub, one, first)
        await joined(hub, two, second)
        await joined(hub, elsewhere, third, "ops")
        for text in ("a", "b", "c"):
            await hub.post("bob", text)
        assert await hub.mark_read("alice", "lobby", 2, told=one) == 2
        await second.wait_for(lambda: markers_of(second.events) == [ReadMarker("lobby", 2)])
        # Never back, never past the end.
        assert await hub.mark_read("alice", "lobby", 1) == 2
        assert await hub.mark_read("alice", "lobby", 99) == 3
        await first.wait_for(lambda: len(markers_of(first.events)) == 2)
        await hub.post("bob", "marker", room="ops")
        await third.wait_for_text("marker")
    assert markers_of(first.events) == [ReadMarker("lobby", 2), ReadMarker("lobby", 3)]
    assert markers_of(third.events) == []


async def test_joins_carry_the_marker_and_listings_the_unread_counts(
    hub: Hub, readers: Callable[..., Reader]
) -> None:
    for text in ("a", "b", "c"):
        await hub.post("bob", text)
    mine = (await hub.post("alice", "mine")).message
    await hub.post("bob", "", relation=Relation(REACT, mine.id, "👍"))
    await hub.post("bob", "d", room="ops")
    assert await hub.mark_read("alice", "lobby", 1) == 1

    rooms, _ = await hub.rooms(user="alice")
    # Own messages and relations are never unread.
    assert {r.name: r.unread for r in rooms} == {"lobby": 2, "ops": 1}
    rooms, _ = await hub.rooms()
    assert {r.unread for r in rooms} == {0}

    async with hub.connect("alice") as alice, hub.connect("") as anonymous:
        reader = readers(alice)
        await joined(hub, alice, reader)
        [done] = [e for e in reader.events if isinstance(e, RoomJoined)]
        assert done.read_seq == 1
        await joined(hub, anonymous, readers(anonymous))
        with pytest.raises(InvalidInput, match="read markers belong to a user"):
            await hub.mark_read(anonymous.name, "lobby", 1)
    await hub.mark_read("alice", "lobby", 6)
    rooms, _ = await hub.rooms(user="alice")
    assert {r.name: r.unread for r in rooms} == {"lobby": 0, "ops": 1}


async def test_marking_read_counts_against_the_request_rate() -> None:
    hub = make_hub(request_rate=0.01, request_burst=1)
    await hub.post("bob", "a")
    await hub.mark_read("alice", "lobby", 1, principal="alice")
    with pytest.raises(LimitExceeded, match="slow down"):
        await hub.mark_read("alice", "lobby", 1, principal="alice")


async def test_markers_told_for_a_name_never_cut_off_its_sessions(
    readers: Callable[..., Reader],
) -> None:
    hub = make_hub(queue_size=4)
    async with hub.connect("bob") as session:
        bob = readers(session, start=False)
        await hub.join(session, "lobby")
        await bob.step()  # RoomJoined, then bob reads nothing more
        await hub.post("carol", "a")
        await hub.post("carol", "b")
        # Anyone may mark for the name bob, again and again: each is told to bob's session,
        # which is not reading.
        for n in range(6):
            await hub.mark_read("bob", "lobby", 2, principal=f"10.0.0.{n}")
        assert not session.closed
        assert session.error is None
