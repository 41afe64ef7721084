"""The client library as a program uses it (not through the CLI): what it refuses, and that
every failure is a ChatError, never a raw gRPC or protobuf one, against a real server."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from pathlib import Path

import pytest

from grpcchat.client import ChatClient, Connected, Reconnecting
from grpcchat.client.config import ClientConfig
from grpcchat.client.errors import ClientClosed
from grpcchat.core.errors import ChatError, ConfigError, InvalidInput, RemoteError
from grpcchat.core.limits import Limits
from grpcchat.core.models import Message, Relation, RelationKind
from grpcchat.server import ChatServer
from grpcchat.server.config import ServerConfig
from tests.helpers import Follower


async def test_a_second_events_of_one_session_is_refused_and_the_first_goes_on(
    client: ChatClient,
) -> None:
    """It failed as if the name were taken, and broke the first stream's state on its way."""
    async with Follower(client.session("hank")) as hank:
        with pytest.raises(ChatError, match="already running"):
            await anext(hank.session.events())
        await hank.session.join("ops")
        await client.send("bob", "still here", "ops")
        [message] = await hank.messages(1)
        assert (message.room, message.text) == ("ops", "still here")


async def test_a_closed_session_refuses_everything(client: ChatClient) -> None:
    """Its sends were posted (as unary Sends), and its read markers moved, after it was
    closed: only streaming and joining were refused."""
    session = client.session("ivy")
    await session.aclose()
    calls = {
        "events": lambda: anext(session.events()),
        "join": lambda: session.join("ops"),
        "leave": lambda: session.leave("lobby"),
        "send": lambda: session.send("after closing"),
        "typing": lambda: session.typing("lobby", True),
        "mark_read": lambda: session.mark_read("lobby", 1),
    }
    for name, call in calls.items():
        with pytest.raises(ClientClosed, match="this session was closed") as refused:
            await call()
        assert refused.value.status == "FAILED_PRECONDITION", name
    assert await client.history("lobby") == []


@pytest.mark.parametrize(
    ("call", "says"),
    [
        (lambda c: c.history("lobby", limit=-5), "limit must be 0 to"),
        (lambda c: c.history("lobby", before=-1), "before must be 0 to"),
        (lambda c: c.message_at("lobby", 2**70), "seq must be 0 to"),
        (lambda c: c.mark_read("lobby", -1, "ann"), "seq must be 0 to"),
        # These dropped items without a word: a negative limit cut the list from its end.
        (lambda c: c.rooms(limit=-1), "limit must be 0 to"),
        (lambda c: c.members("lobby", limit=-3), "limit must be 0 to"),
        (lambda c: c.latest("lobby", limit=-1), "limit must be 0 to"),
        (lambda c: c.session("ann", history=-1).aclose(), "history must be 0 to"),
        (lambda c: c.session("ann", history=2**32).aclose(), "history must be 0 to"),
    ],
)
async def test_numbers_out_of_range_are_invalid_input(client: ChatClient, call, says: str) -> None:  # type: ignore[no-untyped-def]
    """They were protobuf's bare ValueError ("Value out of range"), naming no field."""
    with pytest.raises(InvalidInput, match=says):
        await call(client)


async def test_a_session_marking_read_out_of_range_is_invalid_input(client: ChatClient) -> None:
    """In a room the session is in, the marker goes on its stream, and an out-of-range seq was
    protobuf's bare ValueError there (the unary path, for other rooms, said InvalidInput)."""
    async with Follower(client.session("kim", ["ops"])) as kim:
        for seq in (-1, 2**64):
            with pytest.raises(InvalidInput, match="seq must be 0 to"):
                await kim.session.mark_read("ops", seq)


async def test_latest_finds_a_message_behind_more_reactions_than_it_asks_for(
    client: ChatClient,
) -> None:
    """It read pages of `limit` entries, ten at most: `history --limit 1` of a room whose last
    message twelve people had reacted to said there were no messages."""
    await client.send("ann", "first", "party")
    last = (await client.send("ann", "last", "party")).message
    for n in range(12):
        await client.send(
            f"guest{n}", "", "party", relation=Relation(RelationKind.REACT, last.id, "🎉")
        )
    [latest] = await client.latest("party", limit=1)
    assert (latest.text, len(latest.reactions[0].names)) == ("last", 12)
    assert [m.text for m in await client.latest("party", limit=2)] == ["first", "last"]


async def test_a_closed_client_says_so_and_its_live_session_ends_with_an_error(
    addr: str,
) -> None:
    """Calls on it raised gRPC's UsageError; a session streaming on it ended its reader task
    as if it had been cancelled (a CancelledError nobody asked for)."""
    client = ChatClient(ClientConfig(addr=addr, timeout=5))
    session = client.session("jo")
    connected, got_message = asyncio.Event(), asyncio.Event()

    async def read() -> None:
        async for event in session.events():
            if isinstance(event, Connected):
                connected.set()
            elif isinstance(event, Message):
                got_message.set()

    reader = asyncio.create_task(read())
    await asyncio.wait_for(connected.wait(), 5)
    await client.send("bob", "hi")
    await asyncio.wait_for(got_message.wait(), 5)
    await client.aclose()
    with pytest.raises(RemoteError, match="closed"):
        await asyncio.wait_for(reader, 5)
    assert not reader.cancelled()
    with pytest.raises(RemoteError, match="was closed") as refused:
        await client.send("bob", "after")
    assert refused.value.status == "FAILED_PRECONDITION"
    assert isinstance(refused.value, ClientClosed)  # not a cap the server refused with


@pytest.mark.parametrize("call", ["send", "history", "rooms"])
async def test_closing_a_client_under_a_call_fails_the_call_with_client_closed(
    wedged_addr: str, call: str
) -> None:
    """gRPC cancels the calls of a channel it closes, and the CancelledError came out of
    send(), history() and the rest: the task awaiting it looked cancelled although nobody had
    cancelled it (a TaskGroup took it for a cancellation). The session's stream said
    ClientClosed already."""
    client = ChatClient(ClientConfig(addr=wedged_addr, timeout=30))
    calls = {
        "send": lambda: client.send("ann", "hello"),
        "history": lambda: client.history("lobby"),
        "rooms": lambda: client.rooms(),
    }
    waiting = asyncio.create_task(calls[call]())
    await asyncio.sleep(0.3)  # the call is at the server, which never answers
    assert not waiting.done()
    await client.aclose()
    with pytest.raises(ClientClosed, match="the ChatClient was closed under this"):
        await asyncio.wait_for(waiting, 5)
    assert not waiting.cancelled()


async def test_a_send_awaited_in_the_loop_reading_events_is_answered(client: ChatClient) -> None:
    """A bot that answers each message inside its `async for` over events(): the answer to
    its send comes on the stream that loop reads, so it waited until --timeout for an answer
    only its own loop would have read, and failed. Now the stream is read ahead of it."""
    bot = client.session("echo-bot")
    replies: list[str] = []

    async def run_bot() -> None:
        async for event in bot.events():
            if isinstance(event, Connected):
                await client.send("ann", "ping 1")
            elif isinstance(event, Message) and event.sender == "ann":
                sent = await bot.send(f"pong {event.text}")  # inside the loop
                replies.append(sent.message.text)
                if len(replies) < 3:
                    await client.send("ann", f"ping {len(replies) + 1}")
                else:
                    return

    await asyncio.wait_for(run_bot(), 4)  # each send's own timeout is 5 s
    assert replies == ["pong ping 1", "pong ping 2", "pong ping 3"]
    await bot.aclose()


async def test_a_session_of_no_rooms_gets_the_answer_to_a_send_awaited_on_connected(
    client: ChatClient,
) -> None:
    """Connected came before anything read the stream, so a send awaited there (a bot that
    only sends) waited its whole timeout for an answer that had come, and was posted anyway:
    a retry doubled it."""
    bot = client.session("dm-bot", [])

    async def run_bot() -> str:
        async for event in bot.events():
            if isinstance(event, Connected):
                sent = await bot.send("online", "bots")
                return sent.message.text
        raise AssertionError("events ended")

    assert await asyncio.wait_for(run_bot(), 4) == "online"  # each send's own timeout is 5 s
    assert [m.text for m in await client.history("bots")] == ["online"]
    await bot.aclose()


async def test_a_stream_the_server_ends_at_once_each_time_is_retried_ever_later(
    tmp_path: Path,
) -> None:
    """A history that fails every append ends the session's stream as soon as its pending send
    is written again: each reconnect reset the delays, and the client came back every
    0.1-0.2 s (66 times in 10 s)."""
    path = tmp_path / "h.db"
    config = ServerConfig(port=0, store=f"sqlite://{path}", limits=Limits(rate=0))
    async with (
        ChatServer(config) as server,
        ChatClient(ClientConfig(addr=f"127.0.0.1:{server.port}", timeout=10)) as client,
    ):
        with contextlib.closing(sqlite3.connect(path)) as conn:
            conn.execute(
                "CREATE TRIGGER full_disk BEFORE INSERT ON messages"
                " BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END"
            )
        session = client.session("al", ["r"])
        sending: list[asyncio.Task[object]] = []
        delays: list[float] = []

        async def follow() -> None:
            async for event in session.events():
                if isinstance(event, Connected) and not sending:
                    sending.append(asyncio.create_task(session.send("hello", "r")))
                elif isinstance(event, Reconnecting):
                    delays.append(event.delay)
                    if len(delays) == 4:
                        return

        try:
            await asyncio.wait_for(follow(), 8)
        finally:
            await session.aclose()
            for task in sending:
                with contextlib.suppress(ChatError):
                    await task
        assert delays[0] <= 0.2
        assert delays[3] >= 0.8  # 0.1-0.2, then doubling: 0.8-1.6 s the fourth time


async def test_a_send_the_server_refuses_as_unavailable_is_not_said_maybe_posted(
    server: ChatServer, addr: str
) -> None:
    """Only a send that got no answer in time may have been posted; a suspended server's own
    UNAVAILABLE posted nothing, and its error must not send a user retrying with a key."""
    server.hub.suspend("the message bus is unreachable")
    async with ChatClient(ClientConfig(addr=addr, timeout=1)) as client:
        with pytest.raises(RemoteError) as refused:
            await client.send("ann", "hello")
    assert refused.value.status == "UNAVAILABLE"
    assert str(refused.value) == "the message bus is unreachable"


def test_a_client_made_outside_a_running_loop_says_so() -> None:
    """Its channel belonged to no loop, and its first call failed inside gRPC with 'attached to
    a different loop'."""
    with pytest.raises(ConfigError, match="inside a running event loop"):
        ChatClient(ClientConfig(addr="127.0.0.1:9", timeout=1))
