"""Conversations end to end over the real wire: edits, deletes, reactions and replies live, after
a resume and in History; the refusals, each with its status code; the article's Chat stream
unaffected; typing notices; read markers shared by a user's sessions and unread counts; the
same calls over the web port.

Raw stubs throughout, so the server's checks are exercised, not the client library's. Every
wait is bounded and waits for a marker (a later message, an event), never for silence.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc import aio

from grpcchat.core.history import Retention
from grpcchat.core.limits import Limits
from grpcchat.gen.chat.v1 import chat_service_pb2 as pb
from grpcchat.gen.chat.v1 import chat_service_pb2_grpc as pb_grpc
from grpcchat.server import ChatServer
from grpcchat.server.config import ServerConfig
from tests.test_auth import SECRET, bearer, token
from tests.test_rooms import RawSession
from tests.v1_peer import V1Client

WAIT = 5.0
EDIT, DELETE = pb.Relation.KIND_EDIT, pb.Relation.KIND_DELETE
REACT, UNREACT = pb.Relation.KIND_REACT, pb.Relation.KIND_UNREACT
Metadata = tuple[tuple[str, str], ...]


def config(**overrides: Any) -> ServerConfig:
    settings: dict[str, Any] = {
        "port": 0,
        "store": "memory://",
        "limits": Limits(rate=0, request_rate=0),
        "grace_period": 0.5,
    }
    settings.update(overrides)
    return ServerConfig(**settings)


class Stub(pb_grpc.ChatServiceStub):
    """A raw stub that remembers its channel (session streams are opened on it)."""

    def __init__(self, channel: aio.Channel) -> None:
        super().__init__(channel)
        self.channel = channel


@asynccontextmanager
async def serving(**overrides: Any) -> AsyncIterator[tuple[ChatServer, Stub]]:
    async with (
        ChatServer(config(**overrides)) as server,
        aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        yield server, Stub(channel)


@pytest.fixture(params=["memory", "sqlite"])
def server_config(request: pytest.FixtureRequest, tmp_path: Path) -> ServerConfig:
    """Every engine keeps the conversations contract; the hub and servicer are the same."""
    if request.param == "sqlite":
        return config(store=f"sqlite://{tmp_path / 'history.db'}")
    return config()


@pytest.fixture
async def stub(addr: str) -> AsyncIterator[Stub]:
    async with aio.insecure_channel(addr) as channel:
        yield Stub(channel)


def relation(kind: int, target: str, emoji: str = "") -> pb.Relation:
    return pb.Relation(kind=kind, target=target, emoji=emoji)  # type: ignore[arg-type]


async def send(
    stub: Stub, sender: str, text: str = "", md: Metadata = (), **fields: Any
) -> pb.ChatMessage:
    response = await stub.Send(pb.SendRequest(sender=sender, text=text, **fields), metadata=md)
    return response.message


async def refusal(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


class Stream:
    """The events of a Subscribe or Connect call, read by hand."""

    def __init__(self, call: Any) -> None:
        self.call = call
        self._pending: list[pb.Event] = []
        # What came before the RoomJoined `joined` waited for: the replay, if any.
        self.replayed: list[pb.Event] = []

    async def next_event(self) -> pb.Event:
        while not self._pending:
            response = await asyncio.wait_for(self.call.read(), WAIT)
            if response is grpc.aio.EOF:
                raise AssertionError("the server ended the stream")
            self._pending.extend(response.events)
        return self._pending.pop(0)

    async def until(self, done: Callable[[pb.Event], bool]) -> list[pb.Event]:
        """Events up to and including the first where `done`."""
        events = [await self.next_event()]
        while not done(events[-1]):
            events.append(await self.next_event())
        return events

    async def joined(self) -> pb.RoomJoined:
        *self.replayed, done = await self.until(lambda e: e.HasField("joined"))
        return done.joined


def text_is(text: str) -> Callable[[pb.Event], bool]:
    return lambda event: event.HasField("message") and event.message.text == text


def messages(events: list[pb.Event]) -> list[pb.ChatMessage]:
    return [event.message for event in events if event.HasField("message")]


def typing(events: list[pb.Event]) -> list[pb.Typing]:
    return [event.typing for event in events if event.HasField("typing")]


async def connect(
    stub: Stub, name: str, room: str = "lobby", md: Metadata = (), **join: Any
) -> tuple[RawSession, Stream, pb.RoomJoined]:
    session = RawSession(stub.channel, md)
    await session.hello(name)
    await session.call.write(pb.ConnectRequest(join=pb.JoinRoom(room=room, **join)))
    stream = Stream(session.call)
    return session, stream, await stream.joined()


async def subscribe(
    stub: Stub, name: str, room: str = "lobby", **fields: Any
) -> tuple[Stream, pb.RoomJoined]:
    stream = Stream(stub.Subscribe(pb.SubscribeRequest(name=name, room=room, **fields)))
    return stream, await stream.joined()


# -- relations live, after a resume, and in History --------------------------------------------


async def _converse(stub: Stub, carol: RawSession) -> list[pb.ChatMessage]:
    """Seq 3..11 of the lobby: a reply, edits, reactions (one on carol's session stream), a
    delete, and the marker "end"."""
    first = await send(stub, "alice", "first")
    second = await send(stub, "bob", "second")
    assert (first.seq, second.seq) == (1, 2)
    await send(stub, "bob", "re: first", reply_to=first.id)
    await send(stub, "alice", "first (fixed)", relation=relation(EDIT, first.id))
    await send(stub, "bob", relation=relation(REACT, first.id, "👍"))
    key = uuid.uuid4().hex
    react = pb.SendRequest(room="lobby", key=key, relation=relation(REACT, first.id, "👍"))
    await carol.call.write(pb.ConnectRequest(send=react))
    await send(stub, "bob", relation=relation(REACT, first.id, "👀"))
    await send(stub, "bob", relation=relation(UNREACT, first.id, "👀"))
    await send(stub, "bob", "second (fixed)", relation=relation(EDIT, second.id))
    await send(stub, "bob", relation=relation(DELETE, second.id))
    await send(stub, "alice", "end")
    return [first, second]


async def test_followers_see_relations_live_and_again_after_a_resume(
    stub: Stub,
) -> None:
    subscriber, _ = await subscribe(stub, "sub")
    carol, connected, _ = await connect(stub, "carol")
    # Both followers are registered (their RoomJoined came) before the first post.
    first, second = await _converse(stub, carol)

    for follower in (subscriber, connected):
        live = messages(await follower.until(text_is("end")))
        # Exactly once each, in order (the ack of carol's reaction is no message event).
        assert [m.seq for m in live] == list(range(1, 12))
        kinds = [m.relation.kind if m.HasField("relation") else None for m in live]
        assert kinds == [None, None, None, EDIT, REACT, REACT, REACT, UNREACT, EDIT, DELETE, None]
        assert live[2].reply_to == first.id
        assert (live[3].relation.target, live[3].text) == (first.id, "first (fixed)")
        assert (live[5].sender, live[5].relation.emoji) == ("carol", "👍")
        assert (live[9].relation.target, live[9].text) == (second.id, "")

    # Resume from before all of it, on both kinds of stream: the same entries once each, each
    # in its current state.
    epoch = first.epoch
    after = pb.Position(seq=2, epoch=epoch)
    resumed, _ = await subscribe(stub, "sub2", after=after)
    dave, dave_stream, _ = await connect(stub, "dave", after=after)
    await send(stub, "alice", "after")
    for follower in (resumed, dave_stream):
        replayed = messages(follower.replayed + await follower.until(text_is("after")))
        assert [m.seq for m in replayed] == list(range(3, 13))
        assert replayed[0].reply_to == first.id
        assert replayed[1].relation.kind == EDIT
        # The edit of a message deleted since lost its text too.
        assert (replayed[6].relation.kind, replayed[6].text) == (EDIT, "")

    history = (await stub.History(pb.HistoryRequest(room="lobby"))).messages
    assert [m.seq for m in history] == list(range(1, 13))
    current_first, current_second, reply = history[0], history[1], history[2]
    assert current_first.text == "first (fixed)"
    assert current_first.HasField("edited_at")
    assert not current_first.deleted
    reactions = [(r.emoji, list(r.names)) for r in current_first.reactions]
    assert reactions == [("👍", ["bob", "carol"])]
    assert current_second.deleted
    assert current_second.text == ""
    assert list(current_second.reactions) == []
    assert reply.reply_to == first.id
    assert not reply.HasField("relation")
    # The relation entries themselves, for clients that follow live.
    assert [m.relation.kind for m in history[3:10]] == [
        EDIT,
        REACT,
        REACT,
        REACT,
        UNREACT,
        EDIT,
        DELETE,
    ]
    for call in (subscriber.call, resumed.call, carol.call, dave.call):
        call.cancel()


async def test_a_relation_on_a_session_stream_is_acked(stub: Stub) -> None:
    target = await send(stub, "bob", "hi")
    alice, stream, _ = await connect(stub, "alice")
    requests = [
        pb.SendRequest(key="ok", relation=relation(REACT, target.id, "👋")),
        pb.SendRequest(key="bad", relation=relation(EDIT, target.id), text="mine now"),
        pb.SendRequest(key="unknown", relation=relation(0, target.id)),
    ]
    for request in requests:
        await alice.call.write(pb.ConnectRequest(send=request))
    acks = {}
    while len(acks) < len(requests):
        event = await stream.next_event()
        if event.HasField("ack"):
            acks[event.ack.key] = event.ack
    assert acks["ok"].code == ""
    assert acks["ok"].message.relation.emoji == "👋"
    assert acks["bad"].code == "PERMISSION_DENIED"
    assert acks["unknown"].code == "INVALID_ARGUMENT"
    alice.cancel()


# -- refusals ----------------------------------------------------------------------------------


async def test_only_the_author_edits_or_deletes_with_auth() -> None:
    async with serving(auth_secret=SECRET) as (_, stub):
        alice, bob = bearer(token("alice")), bearer(token("bob"))
        bobs = await send(stub, "bob", "bob's", bob)
        for kind, text in ((EDIT, "alice's now"), (DELETE, "")):
            # The request's sender is ignored: the token says who speaks.
            request = pb.SendRequest(sender="bob", text=text, relation=relation(kind, bobs.id))
            error = await refusal(stub.Send(request, metadata=alice))
            assert error.code() == grpc.StatusCode.PERMISSION_DENIED
            assert f"only bob may {'edit' if kind == EDIT else 'delete'}" in (error.details() or "")
        # Reactions are anyone's; the author edits.
        await send(stub, "", "", alice, relation=relation(REACT, bobs.id, "👍"))
        edited = await send(stub, "", "bob's, fixed", bob, relation=relation(EDIT, bobs.id))
        assert edited.sender == "bob"
        [current, *_] = (await stub.History(pb.HistoryRequest(), metadata=bob)).messages
        assert current.text == "bob's, fixed"


async def test_without_auth_names_decide_too(stub: Stub) -> None:
    bobs = await send(stub, "bob", "bob's")
    error = await refusal(
        stub.Send(pb.SendRequest(sender="alice", relation=relation(DELETE, bobs.id)))
    )
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_what_is_not_there_is_not_found(stub: Stub) -> None:
    elsewhere = await send(stub, "bob", "in ops", room="ops")
    alice = await send(stub, "alice", "here")
    carol, _, _ = await connect(stub, "carol")  # a recipient that is there
    direct = await send(stub, "bob", "psst", recipient="carol")
    cases = {
        "another room's message": pb.SendRequest(
            sender="bob", relation=relation(DELETE, elsewhere.id)
        ),
        "an unknown id": pb.SendRequest(sender="alice", relation=relation(DELETE, "0" * 32)),
        "a direct message's id": pb.SendRequest(sender="bob", relation=relation(DELETE, direct.id)),
        "a relation to a direct message": pb.SendRequest(
            sender="bob", recipient="carol", relation=relation(REACT, alice.id, "👍")
        ),
        "a reply to another room's message": pb.SendRequest(
            sender="alice", text="re", reply_to=elsewhere.id
        ),
    }
    for case, request in cases.items():
        error = await refusal(stub.Send(request))
        assert error.code() == grpc.StatusCode.NOT_FOUND, (case, error.details())
    error = await refusal(stub.Send(cases["a relation to a direct message"]))
    assert "direct messages are not kept" in (error.details() or "")
    carol.cancel()


async def test_a_message_past_retention_is_not_found() -> None:
    async with serving(retention=Retention(max_messages=2)) as (_, stub):
        old = await send(stub, "alice", "old")
        for text in ("newer", "newest"):
            await send(stub, "alice", text)
        for request in (
            pb.SendRequest(sender="alice", text="fixed", relation=relation(EDIT, old.id)),
            pb.SendRequest(sender="alice", relation=relation(DELETE, old.id)),
            pb.SendRequest(sender="bob", text="re", reply_to=old.id),
        ):
            error = await refusal(stub.Send(request))
            assert error.code() == grpc.StatusCode.NOT_FOUND
            assert "past retention" in (error.details() or "")


@pytest.mark.parametrize(
    ("text", "kind", "emoji", "says"),
    [
        ("", REACT, "thumbs up", "blanks"),
        ("", REACT, "", "needs an emoji"),
        ("", UNREACT, "x" * 65, "65 bytes"),
        ("gone", DELETE, "", "carries no text"),
        ("+1", REACT, "👍", "carries no text"),
        ("", EDIT, "", "must not be empty"),
        ("", 0, "", "unknown relation kind"),
        ("", 42, "", "unknown relation kind"),
    ],
)
async def test_bad_relations_are_invalid_argument(
    stub: Stub, text: str, kind: int, emoji: str, says: str
) -> None:
    target = await send(stub, "alice", "hi")
    request = pb.SendRequest(sender="alice", text=text, relation=relation(kind, target.id, emoji))
    error = await refusal(stub.Send(request))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert says in (error.details() or "")
    # Nothing was stored.
    assert len((await stub.History(pb.HistoryRequest())).messages) == 1


# -- the article's stream --------------------------------------------------------------------


async def test_the_article_stream_sees_plain_messages_only(addr: str, stub: Stub) -> None:
    async with V1Client(addr) as v1:
        await v1.join("gopher")
        target = await send(stub, "alice", "original")
        await send(stub, "bob", "a reply", reply_to=target.id)
        await send(stub, "alice", "edited", relation=relation(EDIT, target.id))
        await send(stub, "bob", relation=relation(REACT, target.id, "👍"))
        await send(stub, "alice", relation=relation(DELETE, target.id))
        await send(stub, "alice", "marker")
        seen = await v1.recv_until("alice", "marker")
    assert [(m.sender, m.text) for m in seen] == [
        ("alice", "original"),
        ("bob", "a reply"),
        ("alice", "marker"),
    ]


# -- typing ------------------------------------------------------------------------------------


async def test_typing_reaches_the_others_and_stops_when_the_typist_leaves(
    stub: Stub,
) -> None:
    bob, bob_stream, _ = await connect(stub, "bob")
    alice, alice_stream, _ = await connect(stub, "alice")
    await alice.call.write(pb.ConnectRequest(typing=pb.TypingRequest(room="lobby", active=True)))
    [notice] = typing(await bob_stream.until(lambda e: e.HasField("typing")))
    assert (notice.room, notice.name, notice.active) == ("lobby", "alice", True)
    assert notice.expires_in_ms == 6000
    # The typist's own stream got none (the marker: a later message).
    await send(stub, "carol", "marker")
    assert typing(await alice_stream.until(text_is("marker"))) == []
    await alice.leave("lobby")
    [stopped] = typing(await bob_stream.until(lambda e: e.HasField("typing")))
    assert (stopped.name, stopped.active) == ("alice", False)
    # Not in the room any more: refused, and the session goes on.
    await alice.call.write(pb.ConnectRequest(typing=pb.TypingRequest(room="lobby", active=True)))
    refused = (await alice_stream.until(lambda e: e.HasField("refused"))).pop().refused
    assert (refused.room, refused.code) == ("lobby", "NOT_FOUND")
    alice.cancel()
    bob.cancel()


async def test_a_typing_flood_is_refused_resource_exhausted(
    stub: Stub,
) -> None:
    alice, stream, _ = await connect(stub, "alice")
    for _ in range(10):
        await alice.call.write(
            pb.ConnectRequest(typing=pb.TypingRequest(room="lobby", active=True))
        )
    refused = (await stream.until(lambda e: e.HasField("refused"))).pop().refused
    assert (refused.room, refused.code) == ("lobby", "RESOURCE_EXHAUSTED")
    assert "typing notices" in refused.reason
    # The session is still there.
    await send(stub, "bob", "still here")
    await stream.until(text_is("still here"))
    alice.cancel()


# -- read markers ------------------------------------------------------------------------------


async def test_read_markers_are_shared_by_a_users_sessions() -> None:
    async with serving(auth_secret=SECRET) as (_, stub):
        alice, bob = bearer(token("alice")), bearer(token("bob"))
        one, one_stream, _ = await connect(stub, "alice", md=alice)
        two, two_stream, joined = await connect(stub, "alice", md=alice)
        assert joined.read_seq == 0
        for text in ("a", "b", "c"):
            await send(stub, "", text, bob)
        await send(stub, "", "mine", alice)

        async def unread() -> dict[str, int]:
            rooms = (await stub.ListRooms(pb.ListRoomsRequest(), metadata=alice)).rooms
            return {room.name: room.unread for room in rooms}

        assert await unread() == {"lobby": 3}  # own messages are never unread
        request = pb.MarkReadRequest(room="lobby", seq=2)
        await one.call.write(pb.ConnectRequest(mark_read=request))
        marker = (await two_stream.until(lambda e: e.HasField("read"))).pop().read
        assert (marker.room, marker.seq) == ("lobby", 2)
        assert await unread() == {"lobby": 1}

        # The unary call: the token's user (a name in the request is ignored), every session.
        request = pb.MarkReadRequest(room="lobby", seq=4, name="bob")
        assert (await stub.MarkRead(request, metadata=alice)).seq == 4
        for stream in (one_stream, two_stream):
            # The first marker either sees: the session that marked 2 was not told its own.
            marker = (await stream.until(lambda e: e.HasField("read"))).pop().read
            assert marker.seq == 4
        assert await unread() == {"lobby": 0}
        bobs = (await stub.ListRooms(pb.ListRoomsRequest(), metadata=bob)).rooms
        assert [room.unread for room in bobs] == [1]  # alice's "mine"

        # With auth on, a name is no identity.
        error = await refusal(stub.MarkRead(pb.MarkReadRequest(seq=4, name="alice")))
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED

        # A new session of the user starts where the others are.
        three, _, joined = await connect(stub, "alice", md=alice)
        assert joined.read_seq == 4

        # A session marks only the rooms it is in (as it types only there): refused, and
        # nothing moved. The unary call marks any room.
        await send(stub, "", "elsewhere", bob, room="ops")
        request = pb.MarkReadRequest(room="ops", seq=1)
        await one.call.write(pb.ConnectRequest(mark_read=request))
        refused = (await one_stream.until(lambda e: e.HasField("refused"))).pop().refused
        assert (refused.room, refused.code) == ("ops", "NOT_FOUND")
        assert refused.reason == "not in #ops: join it to mark it read"
        assert (await unread())["ops"] == 1
        for session in (one, two, three):
            session.cancel()


async def test_read_markers_without_auth_name_their_user(stub: Stub) -> None:
    await send(stub, "bob", "a")
    await send(stub, "bob", "b")
    error = await refusal(stub.MarkRead(pb.MarkReadRequest(room="lobby", seq=1)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "give a name" in (error.details() or "")
    marked = await stub.MarkRead(pb.MarkReadRequest(room="lobby", seq=1, name="alice"))
    assert marked.seq == 1
    rooms = (await stub.ListRooms(pb.ListRoomsRequest(name="alice"))).rooms
    assert [(r.name, r.unread) for r in rooms] == [("lobby", 1)]
    rooms = (await stub.ListRooms(pb.ListRoomsRequest())).rooms
    assert [(r.name, r.unread) for r in rooms] == [("lobby", 0)]
    # Joins tell a named subscriber where it is.
    stream, joined = await subscribe(stub, "alice")
    assert joined.read_seq == 1
    stream.call.cancel()


# -- the web port ------------------------------------------------------------------------------


async def test_relations_replies_and_markers_over_the_web_port() -> None:
    pytest.importorskip("connectrpc")
    from grpcchat.gen.chat.v1.chat_service_connect import ChatServiceClient
    from grpcchat.server.config import WEB_PORT_ANY

    async with (
        serving(web_port=WEB_PORT_ANY) as (server, stub),
        ChatServiceClient(f"http://127.0.0.1:{server.web_port}") as web,
    ):
        target = (await web.send(pb.SendRequest(sender="alice", text="hi"))).message
        reply = await web.send(pb.SendRequest(sender="bob", text="re", reply_to=target.id))
        assert reply.message.reply_to == target.id
        reacted = await web.send(
            pb.SendRequest(sender="bob", relation=relation(REACT, target.id, "👍"))
        )
        assert reacted.message.relation.emoji == "👍"
        assert (await web.mark_read(pb.MarkReadRequest(seq=2, name="alice"))).seq == 2
        rooms = (await web.list_rooms(pb.ListRoomsRequest(name="alice"))).rooms
        assert [(r.name, r.unread) for r in rooms] == [("lobby", 0)]
        [current, *_] = (await stub.History(pb.HistoryRequest())).messages
        assert [(r.emoji, list(r.names)) for r in current.reactions] == [("👍", ["bob"])]


# -- metrics -----------------------------------------------------------------------------------


async def test_relations_are_counted_apart_from_messages() -> None:
    from tests.test_metrics import free_port, scrape

    async with serving(metrics_port=free_port()) as (server, stub):
        target = await send(stub, "alice", "hi")
        await send(stub, "bob", "re", reply_to=target.id)
        await send(stub, "bob", relation=relation(REACT, target.id, "👍"))
        await send(stub, "alice", "hi!", relation=relation(EDIT, target.id))
        samples = await scrape(server.metrics_port)
    assert samples.get_value("grpcchat_messages_accepted_total") == 2  # the reply counts
    counted = {kind: samples.get_value("grpcchat_relations_total", kind=kind) for kind in KINDS}
    assert counted == {"edit": 1, "delete": 0, "react": 1, "unreact": 0}


KINDS = ("edit", "delete", "react", "unreact")


# -- the server's log --------------------------------------------------------------------------


async def test_each_relation_has_a_log_line_and_an_edit_keeps_its_text_private(
    stub: Stub, caplog: pytest.LogCaptureFixture
) -> None:
    target = await send(stub, "alice", "hi")
    with caplog.at_level(logging.INFO, logger="grpcchat.relations"):
        await send(stub, "alice", "secret edit", relation=relation(EDIT, target.id))
        await send(stub, "bob", relation=relation(REACT, target.id, "👍"))
        await send(stub, "bob", relation=relation(UNREACT, target.id, "👍"))
        await send(stub, "alice", relation=relation(DELETE, target.id))
    records = [r for r in caplog.records if r.name == "grpcchat.relations"]
    events = [(getattr(r, "event", ""), getattr(r, "target", "")) for r in records]
    assert events == [
        ("message_edited", target.id),
        ("reaction", target.id),
        ("reaction", target.id),
        ("message_deleted", target.id),
    ]
    # A record with a `text` field is private: JSON lines show it only with --log-messages.
    assert [hasattr(r, "text") for r in records] == [True, False, False, False]
    assert [getattr(r, "kind", "") for r in records[1:3]] == ["react", "unreact"]
