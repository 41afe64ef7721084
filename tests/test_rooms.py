"""Rooms, presence, name collisions and direct messages, over the real wire (auth off).

Negative checks ("carol got nothing") never sleep: a marker message is posted after the thing
that must not arrive, and everything a session received before the marker is inspected, since
delivery to one session keeps posting order.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import Callable

import grpc
import pytest

from grpcchat.client import ChatClient, FeedEvent
from grpcchat.client.config import ClientConfig
from grpcchat.core.errors import InvalidInput, RemoteError
from grpcchat.core.limits import Limits
from grpcchat.core.models import Message, PresenceChange, RequestRefused, RoomJoined, RoomLeft
from grpcchat.core.validation import MAX_ROOM_LENGTH
from grpcchat.gen.chat.v1 import chat_service_pb2 as pb
from grpcchat.gen.chat.v1 import chat_service_pb2_grpc as pb_grpc
from grpcchat.server import ChatServer
from tests.conftest import run_cli_async
from tests.helpers import Follower, served

WAIT = 5.0
Metadata = tuple[tuple[str, str], ...]


# -- helpers ------------------------------------------------------------------------------------


class RawSession:
    """A Connect stream driven by hand, so the server's checks are exercised, not the client
    library's."""

    def __init__(self, channel: grpc.aio.Channel, metadata: Metadata = ()) -> None:
        stub = pb_grpc.ChatServiceStub(channel)
        self.call = stub.Connect(metadata=metadata)  # type: ignore[call-arg]
        self._pending: deque[pb.Event] = deque()

    async def hello(self, name: str) -> None:
        await self.call.write(pb.ConnectRequest(hello=pb.Hello(name=name)))

    async def join(self, room: str) -> None:
        await self.call.write(pb.ConnectRequest(join=pb.JoinRoom(room=room)))

    async def leave(self, room: str) -> None:
        await self.call.write(pb.ConnectRequest(leave=pb.LeaveRoom(room=room)))

    async def next_event(self, timeout: float = WAIT) -> pb.Event:
        """The next event; raises the call's error if the stream ends with one."""
        while not self._pending:
            response = await asyncio.wait_for(self.call.read(), timeout)
            if response is grpc.aio.EOF:
                raise AssertionError("the server ended the stream")
            self._pending.extend(response.events)
        return self._pending.popleft()

    async def until(self, kind: str, timeout: float = WAIT) -> list[pb.Event]:
        """Events up to and including the next one of `kind` (a oneof name of Event)."""
        events = [await self.next_event(timeout)]
        while events[-1].WhichOneof("kind") != kind:
            events.append(await self.next_event(timeout))
        return events

    def cancel(self) -> None:
        self.call.cancel()


async def events_until(
    follower: Follower, done: Callable[[FeedEvent], bool], timeout: float = WAIT
) -> list[FeedEvent]:
    """Everything a follower receives up to and including the first event where `done`."""

    async def gather() -> list[FeedEvent]:
        events = [await follower.events.get()]
        while not done(events[-1]):
            events.append(await follower.events.get())
        return events

    return await asyncio.wait_for(gather(), timeout)


def is_text(text: str) -> Callable[[FeedEvent], bool]:
    return lambda event: isinstance(event, Message) and event.text == text


async def before_marker(
    client: ChatClient, follower: Follower, room: str = "lobby", marker: str = "marker"
) -> list[FeedEvent]:
    """Post a marker to `room` and return what `follower` got before it."""
    await client.send("marker-bot", marker, room)
    return (await events_until(follower, is_text(marker)))[:-1]


def messages_of(events: list[FeedEvent]) -> list[Message]:
    return [e for e in events if isinstance(e, Message)]


async def first_failure(client: ChatClient, name: str, rooms: list[str]) -> RemoteError:
    """Open a session that the server must refuse; return the error it raised."""
    session = client.session(name, rooms)

    async def run() -> None:
        async for _ in session.events():
            pass

    try:
        with pytest.raises(RemoteError) as caught:
            await asyncio.wait_for(run(), WAIT)
    finally:
        await session.aclose()
    return caught.value


# -- rooms --------------------------------------------------------------------------------------


async def test_a_session_is_in_several_rooms_at_once(client: ChatClient) -> None:
    async with (
        Follower(client.session("alice", ["lobby", "games"])) as alice,
        Follower(client.session("carol", "ops")) as carol,
    ):
        joined = [e for e in alice.before_connected if isinstance(e, RoomJoined)]
        assert sorted(e.room for e in joined) == ["games", "lobby"]
        await client.send("bob", "to lobby")
        await client.send("bob", "to games", "games")
        await client.send("bob", "to ops", "ops")
        got = await alice.messages(2)
        assert [(m.room, m.text) for m in got] == [("lobby", "to lobby"), ("games", "to games")]
        [ops] = await carol.messages(1)
        assert (ops.room, ops.text) == ("ops", "to ops")
        # Nothing from #ops reached alice, nothing from #lobby or #games reached carol.
        assert messages_of(await before_marker(client, alice)) == []
        assert messages_of(await before_marker(client, carol, "ops")) == []


async def test_the_default_room_is_lobby(client: ChatClient, addr: str) -> None:
    async with Follower(client.session("alice")) as alice:
        [joined] = [e for e in alice.before_connected if isinstance(e, RoomJoined)]
        assert joined.room == "lobby"
        async with grpc.aio.insecure_channel(addr) as channel:
            stub = pb_grpc.ChatServiceStub(channel)
            response = await stub.Send(pb.SendRequest(sender="bob", text="no room given"))
            assert response.message.room == "lobby"
            raw = RawSession(channel)
            await raw.hello("carol")
            await raw.join("")
            [event] = await raw.until("joined")
            assert event.joined.room == "lobby"
            raw.cancel()
        [message] = await alice.messages(1)
        assert (message.room, message.text) == ("lobby", "no room given")


async def test_join_and_leave_on_a_live_session(client: ChatClient) -> None:
    async with Follower(client.session("alice")) as alice:
        await alice.session.join("games")
        joined = await events_until(alice, lambda e: isinstance(e, RoomJoined))
        assert joined[-1] == RoomJoined("games", ("alice",), joined[-1].position, member_count=1)  # type: ignore[union-attr]
        assert await client.members("games") == ["alice"]
        await client.send("bob", "game on", "games")
        [message] = await alice.messages(1)
        assert message.room == "games"

        await alice.session.leave("games")
        await events_until(alice, lambda e: isinstance(e, RoomLeft) and e.room == "games")
        assert await client.members("games") == []
        await client.send("bob", "after leaving", "games")
        assert messages_of(await before_marker(client, alice)) == []


BAD_ROOMS = [
    "Lobby",
    "has space",
    "-dash-first",
    "_underscore-first",
    "x" * (MAX_ROOM_LENGTH + 1),
    "x" * 10_000,
    "émoji",
    "a.b",
    "a/b",
    "..",
    "#lobby",
    "lobby\n",
    "lob\x00by",
    "red\x1b[31m",
    "rtl\u202egames",
    "zero\u200bwidth",
    "\uff4cobby",  # fullwidth l: looks like "lobby"
]


@pytest.mark.parametrize("room", BAD_ROOMS)
async def test_bad_room_names_are_invalid_argument_everywhere(addr: str, room: str) -> None:
    async with grpc.aio.insecure_channel(addr) as channel:
        stub = pb_grpc.ChatServiceStub(channel)
        for call in (
            stub.Send(pb.SendRequest(sender="alice", text="hi", room=room)),
            stub.ListMembers(pb.ListMembersRequest(room=room)),
            stub.History(pb.HistoryRequest(room=room)),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "room name" in (caught.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Subscribe(pb.SubscribeRequest(name="alice", room=room)).read()
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT

        # On a session, a bad join is refused as an event and the session goes on.
        raw = RawSession(channel)
        await raw.hello("alice")
        await raw.join(room)
        [refused] = await raw.until("refused")
        assert refused.refused.code == "INVALID_ARGUMENT"
        assert "room name" in refused.refused.reason
        await raw.join("games")
        [joined] = await raw.until("joined")
        assert joined.joined.room == "games"
        raw.cancel()
        rooms = await stub.ListRooms(pb.ListRoomsRequest())
        assert room not in [r.name for r in rooms.rooms]


async def test_requests_that_make_no_sense_are_refused_and_the_session_goes_on(
    client: ChatClient, addr: str
) -> None:
    async with grpc.aio.insecure_channel(addr) as channel:
        raw = RawSession(channel)
        await raw.hello("alice")
        await raw.join("lobby")
        await raw.until("joined")
        await raw.leave("games")
        [not_in] = await raw.until("refused")
        assert (not_in.refused.room, not_in.refused.code) == ("games", "NOT_FOUND")
        await raw.hello("mallory")
        [again] = await raw.until("refused")
        assert again.refused.code == "INVALID_ARGUMENT"
        await raw.join("lobby")  # already there: refused, so a raw client is never left waiting
        [twice] = await raw.until("refused")
        assert (twice.refused.room, twice.refused.code) == ("lobby", "ALREADY_EXISTS")
        await client.send("bob", "after all that")
        # Only the message: no second RoomJoined, no notice about alice herself.
        [message] = await raw.until("message")
        assert (message.message.text, message.message.sender) == ("after all that", "bob")
        assert await client.members() == ["alice"]
        raw.cancel()


@pytest.mark.parametrize("room", ["x" * MAX_ROOM_LENGTH, "0", "a-b_c", "9lives", "a--__"])
async def test_edge_of_valid_room_names(client: ChatClient, room: str) -> None:
    sent = await client.send("alice", "fits", room)
    assert sent.message.room == room
    assert [r.name for r in await client.rooms()] == [room]


async def test_a_room_exists_while_it_has_members_or_history(client: ChatClient) -> None:
    assert await client.rooms() == []
    async with Follower(client.session("alice", "quiet")) as alice:
        await client.send("bob", "kept", "busy")
        rooms = {r.name: (r.members, r.messages) for r in await client.rooms()}
        assert rooms == {"quiet": (1, 0), "busy": (0, 1)}
        await alice.session.leave("quiet")
        await events_until(alice, lambda e: isinstance(e, RoomLeft))
        rooms = {r.name: (r.members, r.messages) for r in await client.rooms()}
        assert rooms == {"busy": (0, 1)}


# -- presence -----------------------------------------------------------------------------------


async def test_join_and_leave_notices_reach_the_rooms_members(client: ChatClient) -> None:
    async with (
        Follower(client.session("alice")) as alice,
        Follower(client.session("carol", "games")) as carol,
    ):
        async with Follower(client.session("bob", ["lobby", "games"])) as bob:
            # The newcomer learns who is there from RoomJoined, not from a notice about itself.
            joined = {e.room: e.members for e in bob.before_connected if isinstance(e, RoomJoined)}
            assert joined == {"lobby": ("alice", "bob"), "games": ("bob", "carol")}
            assert not any(isinstance(e, PresenceChange) for e in bob.before_connected)
            for follower, room in ((alice, "lobby"), (carol, "games")):
                event = await follower.next_event()
                assert isinstance(event, PresenceChange)
                assert (event.room, event.name, event.joined) == (room, "bob", True)
            assert sorted(await client.members()) == ["alice", "bob"]
            await bob.session.leave("games")
            event = await carol.next_event()
            assert isinstance(event, PresenceChange)
            assert (event.room, event.name, event.joined) == ("games", "bob", False)
        # Bob's session ended: alice hears he left the lobby; carol hears nothing more.
        event = await alice.next_event()
        assert isinstance(event, PresenceChange)
        assert (event.room, event.name, event.joined) == ("lobby", "bob", False)
        assert await client.members() == ["alice"]
        assert await before_marker(client, carol, "games") == []


async def test_a_user_called_system_cannot_forge_a_notice(client: ChatClient, addr: str) -> None:
    async with grpc.aio.insecure_channel(addr) as channel:
        watcher = RawSession(channel)
        await watcher.hello("alice")
        await watcher.join("lobby")
        await watcher.until("joined")
        async with Follower(client.session("system")) as system:
            await system.session.send("bob joined the room")
            notice, forged = await watcher.next_event(), await watcher.next_event()
        watcher.cancel()
    # On the wire the two are different kinds of event, whatever the text says.
    assert notice.WhichOneof("kind") == "presence"
    assert (notice.presence.name, notice.presence.change) == (
        "system",
        pb.PresenceChange.CHANGE_JOINED,
    )
    assert forged.WhichOneof("kind") == "message"
    assert (forged.message.sender, forged.message.text) == ("system", "bob joined the room")


async def test_presence_lists_members_once_and_rooms_with_counts(
    server: ChatServer, client: ChatClient, addr: str
) -> None:
    async with (
        Follower(client.session("zoe", ["lobby", "games"])),
        Follower(client.session("alice", ["lobby"])),
        Follower(client.session("bob", ["games", "ops"])),
        grpc.aio.insecure_channel(addr) as channel,
    ):
        stub = pb_grpc.ChatServiceStub(channel)
        # An anonymous article-style Chat stream listens to the lobby but is nobody.
        legacy = stub.Chat()  # type: ignore[call-arg]
        await asyncio.wait_for(legacy.wait_for_connection(), WAIT)
        subscriber = stub.Subscribe(pb.SubscribeRequest(name="dave", room="ops"))
        await asyncio.wait_for(subscriber.initial_metadata(), WAIT)
        await client.send("carol", "history only", "archive")

        assert server.hub.session_count("lobby") == 3  # the anonymous listener is there...
        assert await client.members() == ["alice", "zoe"]  # ...but it is nobody
        assert await client.members("games") == ["bob", "zoe"]
        assert await client.members("ops") == ["bob", "dave"]
        assert await client.members("nowhere") == []
        rooms = {r.name: (r.members, r.messages) for r in await client.rooms()}
        assert rooms == {"lobby": (2, 0), "games": (2, 0), "ops": (2, 0), "archive": (0, 1)}
        legacy.cancel()
        subscriber.cancel()


# -- names --------------------------------------------------------------------------------------


async def test_a_second_alice_in_a_room_is_already_exists(client: ChatClient, addr: str) -> None:
    async with Follower(client.session("alice")) as alice, Follower(client.session("bob")) as bob:
        for name in ("alice", "  alice  "):
            error = await first_failure(client, name, ["lobby"])
            assert error.status == "ALREADY_EXISTS"
            assert "'alice' is already taken in #lobby" in str(error)
        async with grpc.aio.insecure_channel(addr) as channel:
            stub = pb_grpc.ChatServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.Subscribe(pb.SubscribeRequest(name="alice")).read()
            assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS

        # Another room is another namespace; entering the taken one from there is refused, and
        # that session goes on.
        async with Follower(client.session("alice", "games")) as other:
            await other.session.join("lobby")
            refused = (await events_until(other, lambda e: isinstance(e, RequestRefused)))[-1]
            assert isinstance(refused, RequestRefused)
            assert (refused.room, refused.code) == ("lobby", "ALREADY_EXISTS")
            await client.send("bob", "still in games", "games")
            [message] = await other.messages(1)
            assert message.text == "still in games"
            assert await client.members() == ["alice", "bob"]

        await alice.session.aclose()
        await events_until(bob, lambda e: isinstance(e, PresenceChange) and not e.joined)
        async with Follower(client.session("alice")) as again:
            assert any(isinstance(e, RoomJoined) for e in again.before_connected)


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("", "name must not be empty"),
        ("   ", "name must not be empty"),
        ("a" * 10_000, "limit is 32"),
        ("ali\x1b[31mce", "control characters"),
        ("ali\u202ece", "invisible format characters (U+202E"),
        ("zero\u200bwidth", "invisible format characters (U+200B"),
    ],
)
async def test_bad_names_are_refused_at_hello(addr: str, name: str, reason: str) -> None:
    async with grpc.aio.insecure_channel(addr) as channel:
        raw = RawSession(channel)
        await raw.hello(name)
        # First the refusal as an event (room ""), then, once the client stops writing, the
        # call ends with the same status.
        refused = (await raw.next_event()).refused
        assert (refused.room, refused.code) == ("", "INVALID_ARGUMENT")
        assert reason in refused.reason
        await raw.call.done_writing()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await raw.next_event()
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason in (caught.value.details() or "")


async def test_names_are_compared_exactly(client: ChatClient) -> None:
    """Recorded behaviour: names are case-sensitive and not normalised beyond trimming, so
    look-alikes are different users (only invisible and control characters are refused)."""
    async with Follower(client.session("alice")):
        for lookalike in ("Alice", "\u0430lice", "alice."):  # Cyrillic a, then Latin "lice"
            async with Follower(client.session(lookalike)):
                assert lookalike in await client.members()


# -- direct messages ----------------------------------------------------------------------------


async def test_a_direct_message_reaches_only_its_target_and_the_senders_sessions(
    client: ChatClient,
) -> None:
    async with (
        Follower(client.session("alice")) as alice,
        Follower(client.session("alice", "ops")) as alice_elsewhere,
        Follower(client.session("bob", "games")) as bob,
        Follower(client.session("bob", "ops2")) as bob_elsewhere,
        Follower(client.session("carol", ["lobby", "games", "ops"])) as carol,
    ):
        sent = await alice.session.send("psst", "lobby", recipient="bob")
        assert (sent.message.room, sent.message.seq, sent.message.recipient) == ("", 0, "bob")
        for follower in (alice, alice_elsewhere, bob, bob_elsewhere):
            [message] = await follower.messages(1)
            assert (message.id, message.sender, message.recipient) == (
                sent.message.id,
                "alice",
                "bob",
            )
            assert message.room == ""
        for room in ("lobby", "games", "ops"):
            assert messages_of(await before_marker(client, carol, room, f"marker {room}")) == []
        # Not stored: no room's history has it.
        for room in ("lobby", "games", "ops", "ops2"):
            assert "psst" not in [m.text for m in await client.history(room)]
        assert "" not in [r.name for r in await client.rooms()]


async def test_a_direct_message_to_yourself_arrives_once_per_session(client: ChatClient) -> None:
    async with (
        Follower(client.session("alice")) as alice,
        Follower(client.session("alice", "games")) as other,
    ):
        sent = await client.send("alice", "note to self", recipient="alice")
        for follower, room in ((alice, "lobby"), (other, "games")):
            assert [m.id for m in await follower.messages(1)] == [sent.message.id]
            # Exactly once: nothing else but the marker follows.
            assert messages_of(await before_marker(client, follower, room)) == []


async def test_a_retried_direct_message_is_delivered_once(client: ChatClient) -> None:
    async with Follower(client.session("bob")) as bob:
        first = await client.send("alice", "once", recipient="bob", key="retry-1")
        again = await client.send("alice", "once", recipient="bob", key="retry-1")
        assert (first.duplicate, again.duplicate) == (False, True)
        assert again.message == first.message
        # Keys belong to their sender: bob's own "retry-1" is a new message.
        other = await client.send("bob", "mine", recipient="bob", key="retry-1")
        assert not other.duplicate
        got = messages_of(await before_marker(client, bob))
        assert [m.id for m in got] == [first.message.id, other.message.id]


async def test_a_direct_messages_room_is_ignored(client: ChatClient, addr: str) -> None:
    """As the contract says: a room no room could have did not refuse a direct message."""
    async with Follower(client.session("bob")) as bob, grpc.aio.insecure_channel(addr) as channel:
        stub = pb_grpc.ChatServiceStub(channel)
        request = pb.SendRequest(sender="alice", text="psst", recipient="bob", room="NOT A ROOM!")
        accepted = (await stub.Send(request)).message
        assert (accepted.recipient, accepted.room) == ("bob", "")
        [message] = await bob.messages(1)
        assert (message.sender, message.text, message.recipient) == ("alice", "psst", "bob")


async def test_a_direct_message_to_nobody_is_not_found(client: ChatClient, addr: str) -> None:
    async with Follower(client.session("alice")) as alice:
        with pytest.raises(RemoteError) as caught:
            await client.send("alice", "hello?", recipient="nobody")
        assert caught.value.status == "NOT_FOUND"
        assert "'nobody' is not connected" in str(caught.value)
        async with grpc.aio.insecure_channel(addr) as channel:
            stub = pb_grpc.ChatServiceStub(channel)
            # Said of the recipient: it said "name ...", as if alice's own name were wrong.
            for recipient, says in (
                ("x" * 33, "recipient is 33 characters long; the limit is 32"),
                ("bob\x1b[2J", "recipient must not contain control characters"),
            ):
                with pytest.raises(grpc.aio.AioRpcError) as bad:
                    await stub.Send(pb.SendRequest(sender="alice", text="hi", recipient=recipient))
                assert (bad.value.code(), bad.value.details()) == (
                    grpc.StatusCode.INVALID_ARGUMENT,
                    says,
                )
        with pytest.raises(InvalidInput, match=r"^recipient must not contain control"):
            await client.send("alice", "hi", recipient="b\tob")  # checked before it is sent
        # A listener without a name (the article's Chat stream) cannot be messaged either.
        assert messages_of(await before_marker(client, alice)) == []


# -- limits -------------------------------------------------------------------------------------


async def test_joining_a_thousand_rooms_stops_at_the_limit(
    server: ChatServer, client: ChatClient, addr: str
) -> None:
    limit = server.config.limits.max_rooms_per_session
    async with grpc.aio.insecure_channel(addr) as channel:
        raw = RawSession(channel)
        await raw.hello("greedy")
        for i in range(1000):
            await raw.join(f"room-{i}")
        joined, refused = [], []
        while len(joined) + len(refused) < 1000:
            event = await raw.next_event()
            if event.WhichOneof("kind") == "joined":
                joined.append(event.joined.room)
            elif event.WhichOneof("kind") == "refused":
                refused.append(event.refused)
        assert joined == [f"room-{i}" for i in range(limit)]
        assert len(refused) == 1000 - limit
        # Waiting does not lift a cap, so not RESOURCE_EXHAUSTED: leave a room first.
        assert {r.code for r in refused} == {"FAILED_PRECONDITION"}
        assert f"at most {limit} rooms" in refused[0].reason
        assert len(await client.rooms()) == limit
        # The session is still alive in the rooms it got, and leaving makes room for another.
        await client.send("bob", "still here", "room-0")
        [message] = await raw.until("message")
        assert message.message.text == "still here"
        await raw.leave("room-0")
        await raw.until("left")
        await raw.join("room-999")
        [late] = await raw.until("joined")
        assert late.joined.room == "room-999"
        raw.cancel()


# -- the CLI ------------------------------------------------------------------------------------


async def test_cli_send_to_a_room_and_as_a_direct_message(client: ChatClient, addr: str) -> None:
    async with (
        Follower(client.session("bob")) as bob,
        Follower(client.session("carol", ["lobby", "games"])) as carol,
    ):
        (dm_code, dm_out, dm_err), (room_code, room_out, room_err) = await asyncio.gather(
            run_cli_async(
                "send", "--addr", addr, "--name", "alice", "--to", "bob", "--json", "psst"
            ),
            run_cli_async(
                "send", "--addr", addr, "--name", "alice", "--room", "games", "--json", "gg"
            ),
        )
        assert dm_code == 0, dm_err
        assert room_code == 0, room_err
        dm, in_games = json.loads(dm_out), json.loads(room_out)
        assert (dm["to"], dm["sender"], dm["room"], dm["text"]) == ("bob", "alice", "", "psst")
        assert (in_games["room"], in_games["seq"]) == ("games", 1)
        [received] = await bob.messages(1)
        assert (received.id, received.recipient) == (dm["id"], "bob")
        got = await before_marker(client, carol, "lobby")
        assert [m.id for m in messages_of(got)] == [in_games["id"]]

        code, out, err = await run_cli_async(
            "send", "--addr", addr, "--name", "alice", "--to", "nobody", "x"
        )
        assert code == 4
        assert out == ""
        assert err.strip().splitlines() == [f"error: {'nobody'!r} is not connected"]


async def test_cli_rooms_and_who(client: ChatClient, addr: str) -> None:
    async with (
        Follower(client.session("bob", ["lobby", "games"])),
        Follower(client.session("alice", "games")),
    ):
        await client.send("bob", "one", "games")
        (
            (rooms_code, rooms_out, rooms_err),
            (who_code, who_out, who_err),
            table,
        ) = await asyncio.gather(
            run_cli_async("rooms", "--addr", addr, "--json"),
            run_cli_async("who", "--addr", addr, "--room", "games", "--json"),
            run_cli_async("who", "--addr", addr),
        )
        assert rooms_code == 0, rooms_err
        assert sorted(json.loads(rooms_out), key=lambda r: r["name"]) == [
            {"name": "games", "members": 2, "messages": 1},
            {"name": "lobby", "members": 1, "messages": 0},
        ]
        assert who_code == 0, who_err
        assert json.loads(who_out) == {"room": "games", "members": ["alice", "bob"]}
        assert table[0] == 0, table[2]
        assert "#lobby: bob" in table[1]

        code, out, err = await run_cli_async("who", "--addr", addr, "--room", "Bad Room", "--json")
        assert code == 4
        assert out == ""
        assert len(err.strip().splitlines()) == 1
        assert "room name 'Bad Room' is not allowed" in err


async def test_pages_over_the_request_rate_are_waited_for_within_the_timeout() -> None:
    """A user's unread counts cost a request per 10 rooms: listing 250 rooms runs past a small
    request rate, and the client waits as the server says instead of giving up at once."""
    async with served(Limits(rate=0, request_rate=10, request_burst=10), timeout=10) as (
        server,
        client,
    ):
        for n in range(250):
            await server.hub.post("bob", "hi", room=f"r{n:03d}")
        rooms = await client.rooms(name="alice")
    assert len(rooms) == 250
    assert all(room.unread == 1 for room in rooms)


class _SlowPages(grpc.GenericRpcHandler):
    """A server whose every ListRooms page takes 0.4 s and has a next one."""

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:  # type: ignore[type-arg]
        async def rooms(request: pb.ListRoomsRequest, context: object) -> pb.ListRoomsResponse:
            await asyncio.sleep(0.4)
            page = int(request.page_token or 0)
            return pb.ListRoomsResponse(
                rooms=[pb.RoomInfo(name=f"r{page}")], next_page_token=str(page + 1)
            )

        return grpc.unary_unary_rpc_method_handler(
            rooms,
            request_deserializer=pb.ListRoomsRequest.FromString,
            response_serializer=pb.ListRoomsResponse.SerializeToString,
        )


async def test_every_page_of_a_command_shares_its_timeout() -> None:
    """Each page had a --timeout of its own: `rooms --timeout 1` took 26 s on 30 pages."""
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((_SlowPages(),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with ChatClient(ClientConfig(addr=f"127.0.0.1:{port}", timeout=1.0)) as client:
            started = asyncio.get_running_loop().time()
            with pytest.raises(RemoteError) as timed_out:
                await client.rooms()
            assert asyncio.get_running_loop().time() - started < 2.0
        assert timed_out.value.status == "DEADLINE_EXCEEDED"
    finally:
        await server.stop(0)
