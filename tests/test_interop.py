"""Interoperability with the article's programs over the public `chat.v1.ChatService/Chat` contract.

The article's Go client and Go server are emulated by `tests.v1_peer`, which shares no code with
`grpcchat`: the article's client must chat through our server, and our client library and CLI
must work against the article's server (Chat only, broadcast to everyone including the sender).

A Chat stream has no acknowledgement, so a peer counts as connected once the echo of a message it
wrote itself comes back (`V1Client.join`); every wait is bounded.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta

import grpc
import pytest

from grpcchat.client import ChatClient, ChatSession, Connected, FeedEvent, Reconnecting
from grpcchat.client.config import ClientConfig
from grpcchat.core.errors import RemoteError
from grpcchat.core.models import Message
from grpcchat.gen.chat.v1 import chat_service_pb2 as chat_pb
from tests.conftest import run_cli_async, start_cli
from tests.helpers import Follower
from tests.v1_peer import V1Client, V1Message, V1Server, new_chat_message

WAIT = 5.0
# A timestamp no server would stamp: the article's client could send anything.
BOGUS_SENT_AT = datetime(2001, 1, 1, tzinfo=UTC)
# Fields our server adds to ChatMessage (id, room, seq); a v1 peer must simply ignore them.
EXTRA_FIELDS = frozenset({4, 5, 6, 7})  # id, room, seq, epoch: unknown to the article


def assert_recent(moment: datetime | None, since: datetime) -> None:
    """`moment` is a timestamp taken between `since` and now (one clock, a little slack)."""
    assert moment is not None
    assert since - timedelta(seconds=1) <= moment <= datetime.now(UTC) + timedelta(seconds=1)


def texts(messages: list[V1Message]) -> list[tuple[str, str]]:
    return [(m.sender, m.text) for m in messages]


async def next_message(events: AsyncIterator[FeedEvent]) -> Message:
    """The next chat message of a session feed, failing on anything else."""
    event = await asyncio.wait_for(anext(events), WAIT)
    assert isinstance(event, Message), event
    return event


# --------------------------------------------------------------------------------------------
# The article's client against our server


async def test_article_clients_chat_through_our_server(addr: str, client: ChatClient) -> None:
    async with AsyncExitStack() as stack:
        grace = await stack.enter_async_context(V1Client(addr))
        await grace.join("grace")
        # Opened only now, so it cannot have seen grace's hello.
        adrian = await stack.enter_async_context(V1Client(addr))
        # grace was registered before adrian's hello was posted, so she must get it.
        assert await adrian.join("adrian") == []
        assert texts(await grace.recv_until("adrian", "adrian joined")) == [
            ("adrian", "adrian joined")
        ]

        before = datetime.now(UTC)
        sent = [f"message {i}" for i in range(10)]
        for text in sent:
            await grace.send("grace", text, sent_at=BOGUS_SENT_AT)
        for peer in (grace, adrian):
            received = await peer.recv_until("grace", sent[-1])
            assert texts(received) == [("grace", text) for text in sent]  # all, in order
            for message in received:
                # The server is the authority on time: the bogus client time is replaced.
                assert_recent(message.sent_at, before)
                assert message.ignored_fields == EXTRA_FIELDS

        # A message posted with our Send RPC reaches the article's clients too.
        before = datetime.now(UTC)
        accepted = (await client.send("alice", "hi")).message
        for peer in (grace, adrian):
            message = await peer.recv(WAIT)
            assert (message.sender, message.text) == ("alice", "hi")
            assert message.sent_at is not None
            assert abs(message.sent_at - accepted.sent_at) < timedelta(milliseconds=1)
            assert_recent(message.sent_at, before)

        # An action (/me) says so in its sender there, or it would read as said.
        await client.send("alice", "waves", action=True)
        for peer in (grace, adrian):
            assert texts([await peer.recv(WAIT)]) == [("* alice", "waves")]

        # Typing `exit` half-closes: the stream ends OK, as with the article's server.
        await adrian.close_send()
        code, details, rest = await adrian.finish(WAIT)
        assert (code, details, rest) == (grpc.StatusCode.OK, "", [])
        # ...and grace keeps chatting.
        await grace.send("grace", "still here")
        assert texts([await grace.recv(WAIT)]) == [("grace", "still here")]


@pytest.mark.parametrize(
    ("sender", "text", "details"),
    [
        ("eve", "", "message text must not be empty"),
        ("eve", " \t ", "message text must not be empty"),
        ("", "hello", "name must not be empty"),
        ("ev\x1b[31me", "hello", "name must not contain control characters"),
        (
            "eve\u202e",
            "hello",
            "name must not contain invisible format characters "
            "(U+202E: joiners, bidi controls and the like)",
        ),
        (
            "eve",
            "ring\x07",
            "message must not contain control characters (other than newline and tab)",
        ),
    ],
    ids=["empty-text", "blank-text", "empty-name", "escape-in-name", "bidi-in-name", "bell"],
)
async def test_bad_input_from_an_article_client_ends_only_its_stream(
    addr: str, sender: str, text: str, details: str
) -> None:
    async with V1Client(addr) as dora, V1Client(addr) as eve:
        await dora.join("dora")
        await eve.join("eve")
        assert texts(await dora.recv_until("eve", "eve joined")) == [("eve", "eve joined")]

        await eve.send(sender, text)
        code, got_details, seen = await eve.finish(WAIT)
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert got_details == details
        assert got_details.isprintable()
        # The article's client shows what it receives, not how the stream ended: the server
        # says it on the stream first (its user saw nothing, and what they typed went nowhere).
        assert texts(seen)[-1] == (
            "grpcchat",
            f"not sent: {details} (INVALID_ARGUMENT); this chat has ended, start it again",
        )

        # dora's stream lives on, and the refused message never reached it: had it been
        # posted, it would have been queued before this one.
        await dora.send("dora", "still here")
        assert texts([await dora.recv(WAIT)]) == [("dora", "still here")]


async def test_a_refused_line_ends_the_stream_after_the_lines_before_it(
    addr: str, client: ChatClient
) -> None:
    """Lines written at once, the second refused: the first is posted and echoed before the
    refusal, and the third, written after the refused one, is never posted (the client was
    told the chat has ended: retyping it must not double it)."""
    async with V1Client(addr) as eve:
        await eve.join("eve")
        for text in ("first", "", "after"):
            await eve.send("eve", text)
        await eve.close_send()
        code, details, seen = await eve.finish(WAIT)
    assert (code, details) == (grpc.StatusCode.INVALID_ARGUMENT, "message text must not be empty")
    assert texts(seen) == [
        ("eve", "first"),
        (
            "grpcchat",
            "not sent: message text must not be empty (INVALID_ARGUMENT); "
            "this chat has ended, start it again",
        ),
    ]
    assert [m.text for m in await client.history("lobby")] == ["eve joined", "first"]


@pytest.mark.parametrize(
    ("fields", "details"),
    [
        (
            {"recipient": "bob"},
            "the Chat stream cannot send a direct message (it would be posted to the lobby): "
            "use Send or a Connect session",
        ),
        (
            {"room": "ops"},
            "the Chat stream posts to #lobby only: use Send or a Connect session for other rooms",
        ),
        (
            {"relation": chat_pb.Relation(kind=chat_pb.Relation.KIND_EDIT, target="x" * 32)},
            "the Chat stream cannot edit, delete or react to a message: "
            "use Send or a Connect session",
        ),
    ],
    ids=["recipient", "room", "relation"],
)
async def test_the_article_stream_refuses_what_it_cannot_carry(
    addr: str, client: ChatClient, fields: dict[str, object], details: str
) -> None:
    """Fields of our ChatMessage that the article's stream cannot honour are refused: a direct
    message was posted to the whole lobby as a plain line."""
    async with V1Client(addr) as eve:
        await eve.write(chat_pb.ChatMessage(sender="eve", text="for bob only", **fields))  # type: ignore[arg-type]
        code, got_details, _ = await eve.finish(WAIT)
    assert (code, got_details) == (grpc.StatusCode.INVALID_ARGUMENT, details)
    assert await client.history("lobby") == []


async def test_the_article_stream_posts_actions_and_replies_in_the_lobby(
    addr: str, client: ChatClient
) -> None:
    target = (await client.send("alice", "who is here?")).message
    async with V1Client(addr) as eve:
        await eve.write(chat_pb.ChatMessage(sender="eve", text="waves", action=True))
        await eve.write(chat_pb.ChatMessage(sender="eve", text="me", reply_to=target.id))
        await eve.recv_until("eve", "me")
    *_, action, reply = await client.history("lobby")
    assert (action.text, action.action, action.reply_to) == ("waves", True, "")
    assert (reply.text, reply.action, reply.reply_to) == ("me", False, target.id)


# --------------------------------------------------------------------------------------------
# Our client against the article's server


@pytest.fixture
def article_server() -> Iterator[V1Server]:
    with V1Server() as running:
        yield running


@pytest.fixture
async def article_client(article_server: V1Server) -> AsyncIterator[ChatClient]:
    async with ChatClient(ClientConfig(addr=article_server.addr, timeout=WAIT)) as connected:
        yield connected


async def test_send_falls_back_to_chat_on_the_article_server(
    article_server: V1Server, article_client: ChatClient
) -> None:
    async with V1Client(article_server.addr) as carol:
        await carol.join("carol")
        before = datetime.now(UTC)
        accepted = (await article_client.send("bot", "hello")).message

        # The article's server assigns no id or position; the time is ours.
        assert (accepted.id, accepted.seq, accepted.room) == ("", 0, "lobby")
        assert (accepted.sender, accepted.text) == ("bot", "hello")
        assert_recent(accepted.sent_at, before)

        message = await carol.recv(WAIT)
        assert (message.sender, message.text) == ("bot", "hello")
        # The article's server relays messages as written: the time is the one our client set.
        assert message.sent_at == accepted.sent_at
        assert ("bot", "hello") in article_server.log


async def test_send_to_a_room_on_the_article_server_is_refused(
    article_server: V1Server, article_client: ChatClient
) -> None:
    with pytest.raises(RemoteError) as refused:
        await article_client.send("bot", "hello", "dev")
    assert refused.value.status == "UNIMPLEMENTED"
    assert article_server.log == []


async def test_a_session_on_the_article_server_reads_only_the_contracts_fields(
    article_server: V1Server, article_client: ChatClient
) -> None:
    """That server relays whatever its clients write: a room, a recipient or a position beside
    sender, text and sent_at are any client's say-so (a line read as private, or as said in
    another room)."""
    extended = chat_pb.ChatMessage(
        sender="mallory", text="psst", room="games", recipient="alice", seq=7, action=True
    )
    async with Follower(article_client.session("alice")) as alice:
        # Her own line back: her stream is in the server's broadcast set.
        await alice.session.send("alice here")
        assert [m.text for m in await alice.messages(1)] == ["alice here"]
        async with V1Client(article_server.addr) as mallory:
            as_written = new_chat_message("mallory", "psst")
            as_written.MergeFromString(extended.SerializeToString())  # the extra fields, unknown
            await mallory.write(as_written)
            [message] = await alice.messages(1)
    assert (message.sender, message.text) == ("mallory", "psst")
    assert (message.room, message.recipient, message.seq, message.action) == ("lobby", "", 0, False)


async def test_session_on_the_article_server(
    article_server: V1Server, article_client: ChatClient
) -> None:
    async with V1Client(article_server.addr) as carol:
        await carol.join("carol")
        session = article_client.session("alice")
        events = session.events()
        try:
            assert await asyncio.wait_for(anext(events), WAIT) == Connected(("lobby",), legacy=True)
            assert session.legacy

            # The article's server echoes to the sender: alice's own message back means her
            # stream is in the broadcast set.
            posted = (await session.send("alice here")).message
            assert (posted.id, posted.room, posted.sender) == ("", "lobby", "alice")
            own = await next_message(events)
            assert (own.sender, own.text, own.room, own.id, own.seq) == (
                "alice",
                "alice here",
                "lobby",
                "",
                0,
            )
            assert texts([await carol.recv(WAIT)]) == [("alice", "alice here")]

            before = datetime.now(UTC)
            await carol.send("carol", "hi alice")
            incoming = await next_message(events)
            assert (incoming.sender, incoming.text, incoming.room) == ("carol", "hi alice", "lobby")
            assert_recent(incoming.sent_at, before)
            assert texts([await carol.recv(WAIT)]) == [("carol", "hi alice")]

            # Leave right after the last message, with the feed still being read (as `join`
            # does): aclose half-closes, the server finishes the call and nothing is lost.
            rest: list[FeedEvent] = []

            async def read_rest() -> None:
                async for event in events:
                    rest.append(event)
                    if isinstance(event, Message) and event.text == "bye":
                        return

            reader = asyncio.create_task(read_rest())
            await session.send("bye")
            started = time.monotonic()
            await session.aclose()
            # Well under aclose's 2 s fallback: the call ended because of the half-close.
            assert time.monotonic() - started < 1.5
            assert texts([await carol.recv(WAIT)]) == [("alice", "bye")]
            await asyncio.wait_for(reader, WAIT)
            assert [(e.sender, e.text) for e in rest if isinstance(e, Message)] == [
                ("alice", "bye")
            ]
            assert article_server.log[-1] == ("alice", "bye")
        finally:
            await events.aclose()


async def test_sends_in_flight_on_the_article_server_are_written_one_at_a_time(
    article_server: V1Server, article_client: ChatClient
) -> None:
    """Many sends in flight on the article's stream (as `grpcchat send` of piped lines makes):
    it takes one write at a time (a second write while one is pending fails), in order."""
    session = article_client.session("alice")
    events = session.events()
    # Large enough that writes wait on flow control: several are pending at once.
    expected = [f"m{i} " + "x" * 4000 for i in range(40)]
    try:
        assert await asyncio.wait_for(anext(events), WAIT) == Connected(("lobby",), legacy=True)
        sending = [asyncio.create_task(session.send(text)) for text in expected]
        sent = await asyncio.wait_for(asyncio.gather(*sending), WAIT)
        assert [s.message.text for s in sent] == expected
        echoed = [await next_message(events) for _ in expected]  # the server's broadcast
        assert [m.text for m in echoed] == expected
    finally:
        await session.aclose()
        await events.aclose()


async def test_session_in_another_room_on_the_article_server_is_refused(
    article_server: V1Server, article_client: ChatClient
) -> None:
    session = article_client.session("alice", "dev")
    with pytest.raises(RemoteError) as refused:
        await asyncio.wait_for(anext(session.events()), WAIT)
    assert refused.value.status == "UNIMPLEMENTED"
    assert "no rooms" in str(refused.value)
    assert "'lobby'" in str(refused.value)


async def _closed_session_events(session: ChatSession, events: AsyncIterator[FeedEvent]) -> None:
    """Read a feed after its session was closed: it must end, not reconnect."""
    async with asyncio.timeout(WAIT):
        async for event in events:
            assert not isinstance(event, Reconnecting | Connected), event


async def test_closed_legacy_session_does_not_reconnect(article_client: ChatClient) -> None:
    session = article_client.session("alice")
    events = session.events()
    try:
        assert await asyncio.wait_for(anext(events), WAIT) == Connected(("lobby",), legacy=True)
        await session.send("bye")
        assert (await next_message(events)).text == "bye"
        await session.aclose()
        await _closed_session_events(session, events)
    finally:
        await events.aclose()


async def test_cli_send_to_the_article_server(article_server: V1Server) -> None:
    async with V1Client(article_server.addr) as carol:
        await carol.join("carol")
        before = datetime.now(UTC)
        code, out, err = await run_cli_async(
            "send", "--addr", article_server.addr, "--name", "bot", "hi"
        )
        assert code == 0, err
        assert "#lobby" in out
        message = await carol.recv(WAIT)
        assert (message.sender, message.text) == ("bot", "hi")
        assert_recent(message.sent_at, before)
        assert article_server.log[-1] == ("bot", "hi")


async def test_cli_join_with_piped_input_on_the_article_server(article_server: V1Server) -> None:
    async with V1Client(article_server.addr) as carol:
        await carol.join("carol")
        code, out, err = await run_cli_async(
            "join", "--addr", article_server.addr, "--name", "dave", stdin="hello from dave\n"
        )
        assert code == 0, err
        assert texts([await carol.recv(WAIT)]) == [("dave", "hello from dave")]
        # Its own message came back to it before it left (the half-close lost nothing).
        assert "dave: hello from dave" in out


async def _line_join_shows(article_server: V1Server, sender: str, text: str, mark: bytes) -> str:
    """The line `grpcchat join` prints (as dave) for what mallory writes on the article's
    server, `mark` being in it."""
    process = await start_cli("join", "--addr", article_server.addr, "--name", "dave")
    assert process.stdin is not None
    assert process.stdout is not None
    try:
        async with V1Client(article_server.addr) as mallory:
            await mallory.join("mallory")
            process.stdin.write(b"ready\n")
            await process.stdin.drain()
            async with asyncio.timeout(WAIT):  # dave's own line is back: he is reading
                while b"dave: ready" not in await process.stdout.readline():
                    pass
            await mallory.send(sender, text)
            async with asyncio.timeout(WAIT):
                shown = await process.stdout.readline()
                while mark not in shown:
                    shown = await process.stdout.readline()
        process.stdin.close()
        async with asyncio.timeout(WAIT):
            await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    return shown.decode()


async def test_join_shows_what_drives_a_terminal_as_visible_characters(
    article_server: V1Server,
) -> None:
    """The article's server relays whatever its clients send: escape sequences that would
    clear the screen, retitle the window or colour the rest reach `join` as text to show."""
    line = await _line_join_shows(
        article_server, "evil\x1b[2J", "\x1b]0;pwned\x07\x1b[31mred\x9b0m", b"red"
    )
    assert line.endswith("evil␛[2J: ␛]0;pwned␇␛[31mred�0m\n")
    assert not any(0x80 <= ord(c) < 0xA0 or (ord(c) < 32 and c != "\n") for c in line)


async def test_join_shows_a_name_that_breaks_the_line_on_one_line(
    article_server: V1Server,
) -> None:
    """A name is shown on one line: one with line breaks (the article's server relays any
    name) would otherwise print a line of its own that reads as a join notice."""
    fake = "mallory\n12:00:00 → carol joined #lobby\nx"
    line = await _line_join_shows(article_server, fake, "hi", b"hi")
    assert line.endswith("mallory␊12:00:00 → carol joined #lobby␊x: hi\n")
