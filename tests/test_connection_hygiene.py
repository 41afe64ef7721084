"""Long-lived stream hygiene: keepalive that agrees on both sides, the application heartbeat on
session streams, and --max-connection-age with a finite grace, across which a session resumes
with nothing lost and nothing doubled. Real servers on port 0, real clients."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import replace

import grpc
import pytest
from grpc import aio

from grpcchat.client import ChatClient, ChatSession, Connected, FeedEvent, Reconnecting
from grpcchat.client import channel as client_channel
from grpcchat.client.config import ClientConfig
from grpcchat.client.oneshot import send_lines
from grpcchat.core.models import Envelope, Message, RequestRefused
from grpcchat.core.session import Session
from grpcchat.gen.chat.v1 import chat_service_pb2 as pb
from grpcchat.gen.chat.v1 import chat_service_pb2_grpc as pb_grpc
from grpcchat.server import ChatServer
from grpcchat.server.config import ServerConfig
from grpcchat.server.connections import Keepalive, connection_options
from tests.conftest import ServerProcess, run_cli
from tests.helpers import Follower


@contextlib.asynccontextmanager
async def running(config: ServerConfig, **changes: object) -> AsyncIterator[ChatServer]:
    async with ChatServer(replace(config, **changes)) as server:
        yield server


def _client(server: ChatServer) -> ChatClient:
    return ChatClient(ClientConfig(addr=f"127.0.0.1:{server.port}", timeout=5.0))


# -- keepalive --------------------------------------------------------------------------------


def test_client_keepalive_agrees_with_what_the_server_permits() -> None:
    server = Keepalive()
    options = dict(client_channel._CHANNEL_OPTIONS)
    # Twice the permitted interval: timer jitter never makes one of our pings "too soon".
    assert options["grpc.keepalive_time_ms"] >= 2 * server.min_ping_interval * 1000
    assert options["grpc.keepalive_permit_without_calls"] == int(server.permit_without_calls)
    # Pings go on while a stream only reads (gRPC's default stops after two).
    assert options["grpc.http2.max_pings_without_data"] == 0
    served = dict(connection_options(server, 0, 30))
    assert served["grpc.http2.min_ping_interval_without_data_ms"] == 10_000
    assert "grpc.max_connection_age_ms" not in served  # no age limit unless asked


def test_connection_age_options_have_a_finite_grace() -> None:
    served = dict(connection_options(Keepalive(), 300, 30))
    assert served["grpc.max_connection_age_ms"] == 300_000
    assert served["grpc.max_connection_age_grace_ms"] == 30_000


@pytest.mark.parametrize(
    "changes",
    [{"heartbeat": -1}, {"max_connection_age": float("inf")}, {"max_connection_age_grace": -2}],
)
def test_connection_settings_are_validated(changes: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="0 or more seconds"):
        replace(ServerConfig(), **changes)


# The server in these tests permits a ping every 5 s and GOAWAYs at the second strike; a gRPC
# client pings at most once a second whatever it is configured to, so an abusive client is
# told off within ~2 s of quiet. No heartbeat: data the server writes resets the strikes.
STRICT = Keepalive(min_ping_interval=5.0, max_ping_strikes=1)
ABUSIVE = [("grpc.keepalive_time_ms", 100), ("grpc.http2.max_pings_without_data", 0)]


async def test_a_client_pinging_too_often_gets_goaway_too_many_pings(
    server_config: ServerConfig,
) -> None:
    async with (
        running(server_config, keepalive=STRICT, heartbeat=0) as server,
        aio.insecure_channel(f"127.0.0.1:{server.port}", options=ABUSIVE) as chan,
    ):
        call = pb_grpc.ChatServiceStub(chan).Subscribe(
            pb.SubscribeRequest(name="pinger", room="lobby")
        )
        with pytest.raises(grpc.RpcError) as failure:
            await asyncio.wait_for(_read_all(call), 15)
    assert failure.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "too many pings" in (failure.value.details() or "").lower()


async def test_a_stream_the_server_keeps_writing_to_tolerates_frequent_pings(
    server_config: ServerConfig,
) -> None:
    """What actually happens: every write of the server resets the ping strikes, so pings
    abuse only a quiet connection; a heartbeat more frequent than the pings avoids it."""
    async with (
        running(server_config, keepalive=STRICT, heartbeat=0.2) as server,
        aio.insecure_channel(f"127.0.0.1:{server.port}", options=ABUSIVE) as chan,
    ):
        call = pb_grpc.ChatServiceStub(chan).Subscribe(
            pb.SubscribeRequest(name="pinger", room="lobby")
        )
        # Four seconds: four pings, each a strike on a quiet stream (GOAWAY at the second).
        deadline = time.monotonic() + 4
        responses = 0
        while time.monotonic() < deadline:
            response = await asyncio.wait_for(call.read(), 2)
            assert isinstance(response, pb.SubscribeResponse)
            responses += 1
        assert not call.done()
        assert responses > 10  # the heartbeats
        call.cancel()


async def _read_all(
    call: aio.UnaryStreamCall[pb.SubscribeRequest, pb.SubscribeResponse],
    into: list[pb.SubscribeResponse] | None = None,
) -> None:
    async for response in call:
        if into is not None:
            into.append(response)


async def test_a_session_survives_goaway_too_many_pings_and_loses_nothing(
    server_config: ServerConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    options = [o for o in client_channel._CHANNEL_OPTIONS if o[0] not in dict(ABUSIVE)]
    async with (
        running(server_config, keepalive=STRICT, heartbeat=0) as server,
        _client(server) as poster,
    ):
        monkeypatch.setattr(client_channel, "_CHANNEL_OPTIONS", [*options, *ABUSIVE])
        pinger = _client(server)
        monkeypatch.undo()
        async with pinger, Follower(pinger.session("alice", ["lobby"], history=0)) as alice:
            posted = 0
            for cycle in range(2):
                live = [f"live {cycle}.{i}" for i in range(5)]
                for text in live:
                    await poster.send("bob", text, "lobby")
                # Quiet after these: the pings become strikes and the server sends GOAWAY.
                texts, reasons = await _texts_until(alice, len(live), reconnecting=True)
                assert texts == live
                assert any("too many pings" in r.lower() for r in reasons), reasons
                # Posted while alice is away: her resume must bring them, once.
                missed = [f"missed {cycle}.{i}" for i in range(5)]
                for text in missed:
                    await poster.send("bob", text, "lobby")
                texts, _ = await _texts_until(alice, len(missed), connected=True)
                assert texts == missed
                posted += len(live) + len(missed)
            assert alice.session.positions["lobby"].seq == posted
            # Nothing more, no late duplicate: the next message is one posted after.
            await poster.send("bob", "the end", "lobby")
            assert [m.text for m in await alice.messages(1)] == ["the end"]


async def _texts_until(
    follower: Follower, count: int, *, reconnecting: bool = False, connected: bool = False
) -> tuple[list[str], list[str]]:
    """Message texts until `count` arrived and (if asked) a reconnect was announced or the
    session is live again, with the reconnect reasons; at most 15 s."""
    texts: list[str] = []
    reasons: list[str] = []
    seen_connected = False
    async with asyncio.timeout(15):
        while not (
            len(texts) >= count
            and (reasons or not reconnecting)
            and (seen_connected or not connected)
        ):
            event = await follower.events.get()
            if isinstance(event, Message):
                texts.append(event.text)
            elif isinstance(event, Reconnecting):
                reasons.append(event.reason)
            elif isinstance(event, Connected):
                seen_connected = True
    return texts, reasons


# -- heartbeat --------------------------------------------------------------------------------


FROZEN_CLIENT = """
import asyncio, sys
from grpcchat.client import ChatClient, Connected
from grpcchat.client.config import ClientConfig

async def main():
    async with ChatClient(ClientConfig(addr=sys.argv[1])) as client:
        async for event in client.session("frozen").events():
            if isinstance(event, Connected):
                print("connected", flush=True)

asyncio.run(main())
"""


async def test_a_frozen_client_loses_its_session_within_the_keepalive_timeout(
    server_config: ServerConfig,
) -> None:
    """gRPC waited 60 s for a ping's answer whatever the keepalive timeout said: a client that
    stopped answering (suspended, its network gone) kept its session and name for 90 s."""
    keepalive = Keepalive(time=1.0, timeout=1.0)
    async with ChatServer(replace(server_config, keepalive=keepalive)) as server:
        client = await asyncio.create_subprocess_exec(
            sys.executable, "-c", FROZEN_CLIENT, f"127.0.0.1:{server.port}",
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            assert client.stdout is not None
            line = await asyncio.wait_for(client.stdout.readline(), 15)
            assert line == b"connected\n"
            assert server.hub.session_count("lobby") == 1
            client.send_signal(signal.SIGSTOP)
            async with asyncio.timeout(8):  # a ping a second, its answer due within 1 s
                while server.hub.session_count("lobby"):  # noqa: ASYNC110 (no event to wait on)
                    await asyncio.sleep(0.1)
        finally:
            client.kill()
            await client.wait()


def test_a_connection_without_calls_is_closed_after_a_while() -> None:
    """One address held thousands of idle connections (a preface, then nothing) and took every
    file descriptor of the server: nothing closed a connection without calls."""
    options = dict(connection_options(Keepalive(), 0, 0))
    assert options["grpc.max_connection_idle_ms"] == 60_000
    assert options["grpc.http2.ping_timeout_ms"] == options["grpc.keepalive_timeout_ms"]


async def test_an_idle_subscribe_stream_gets_empty_responses(server_config: ServerConfig) -> None:
    async with (
        running(server_config, heartbeat=0.2) as server,
        aio.insecure_channel(f"127.0.0.1:{server.port}") as chan,
    ):
        stub = pb_grpc.ChatServiceStub(chan)
        call = stub.Subscribe(pb.SubscribeRequest(name="idle", room="lobby"))
        first = await asyncio.wait_for(call.read(), 5)  # RoomJoined
        assert isinstance(first, pb.SubscribeResponse)
        assert len(first.events) == 1
        started = time.monotonic()
        beats = 0
        while beats < 3:
            response = await asyncio.wait_for(call.read(), 2)
            assert isinstance(response, pb.SubscribeResponse)
            assert len(response.events) == 0
            assert response.ByteSize() == 0
            beats += 1
        # One every 0.2 s, not a burst.
        assert 0.5 < time.monotonic() - started < 2.0
        # A message still comes through as usual.
        async with _client(server) as poster:
            await poster.send("bob", "after the quiet", "lobby")
        response = await asyncio.wait_for(call.read(), 2)
        while isinstance(response, pb.SubscribeResponse) and not response.events:
            response = await asyncio.wait_for(call.read(), 2)
        assert isinstance(response, pb.SubscribeResponse)
        assert response.events[0].message.text == "after the quiet"
        call.cancel()


async def test_a_cancelled_stream_leaves_no_task_behind(server_config: ServerConfig) -> None:
    def watchdogs() -> list[asyncio.Task[object]]:
        return [t for t in asyncio.all_tasks() if "_when_ended" in repr(t.get_coro())]

    async with (
        running(server_config) as server,
        aio.insecure_channel(f"127.0.0.1:{server.port}") as chan,
    ):
        stub = pb_grpc.ChatServiceStub(chan)
        calls = [stub.Subscribe(pb.SubscribeRequest(name=f"u{i}")) for i in range(5)]
        for call in calls:
            await asyncio.wait_for(call.read(), 5)  # RoomJoined: its writer is writing
        for call in calls:
            call.cancel()  # how a client ends a Subscribe
        deadline = time.monotonic() + 5
        while server.hub.registered_sessions:
            assert time.monotonic() < deadline, "the cancelled sessions did not end"
            await asyncio.sleep(0.01)
        # No watchdog for a writer that is gone: it would hold the call CLOSE_FLUSH_GRACE,
        # then fail to abort it ("Task exception was never retrieved").
        assert watchdogs() == []


async def test_a_session_ignores_heartbeats(server_config: ServerConfig) -> None:
    async with (
        running(server_config, heartbeat=0.1) as server,
        _client(server) as client,
        Follower(client.session("alice", ["lobby"], history=0)) as alice,
    ):
        # Some five heartbeats on alice's Connect stream, then a message: the very next event
        # is that message (a heartbeat surfaced as an event would come first).
        for text in ("hello", "again"):
            await asyncio.sleep(0.5)
            await client.send("bob", text, "lobby")
            event = await alice.next_event()
            assert isinstance(event, Message), event
            assert event.text == text


def _event(n: int) -> Envelope:
    return Envelope(RequestRefused("lobby", "INVALID_ARGUMENT", f"event {n}"))


async def test_heartbeat_costs_a_busy_stream_no_timer_per_write(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A stream that keeps writing arms the heartbeat timer at most once a heartbeat (not once
    per idle wait) and never gets an empty batch; once quiet, it gets one per heartbeat."""
    armed = 0
    arm = Session._arm_beat

    def counting(self: Session, loop: asyncio.AbstractEventLoop, heartbeat: float) -> None:
        nonlocal armed
        armed += 1
        arm(self, loop, heartbeat)

    monkeypatch.setattr(Session, "_arm_beat", counting)
    session = Session("busy", capacity=100, max_batch=10, linger=0)
    batches = session.batches(heartbeat=0.3)
    written: list[tuple[float, int]] = []  # (when, how many events)

    async def write() -> None:
        async for batch in batches:
            written.append((time.monotonic(), len(batch)))

    writer = asyncio.create_task(write())
    started = time.monotonic()
    for n in range(120):  # an event every 10 ms for 1.2 s
        session.offer(_event(n))
        await asyncio.sleep(0.01)
    stopped = time.monotonic()
    armed_while_busy = armed
    await asyncio.sleep(0.75)  # quiet: heartbeats, one per 0.3 s
    busy = [count for when, count in written if when < stopped]
    assert len(busy) > 40  # each write was followed by an idle wait
    assert all(busy), "a busy stream got a heartbeat"
    # Some 120 idle waits, a handful of timers: once per heartbeat (plus the first).
    assert armed_while_busy <= (stopped - started) / 0.3 + 2
    beats = [when - stopped for when, count in written if when >= stopped and not count]
    assert len(beats) == 2, beats
    assert 0.25 < beats[0] < 0.45
    assert 0.25 < beats[1] - beats[0] < 0.45
    session.close()
    await asyncio.wait_for(writer, 1)  # the stream ends
    assert session._beat is None  # the timer goes with the stream


# -- max connection age -----------------------------------------------------------------------


async def test_goaway_from_max_connection_age_loses_nothing(server_config: ServerConfig) -> None:
    """A join-style session keeps every message exactly once and in order while its
    connection is aged out (GOAWAY after ~1 s, streams cut after 1 s more) again and again."""
    count = 200
    async with (
        running(server_config, max_connection_age=1.0, max_connection_age_grace=1.0) as server,
        _client(server) as listener,
        _client(server) as poster,
        Follower(listener.session("alice", ["lobby"], history=0)) as alice,
    ):
        reasons: list[str] = []

        async def post_all() -> None:
            for i in range(count):
                await poster.send("bob", f"m{i:03}", "lobby")
                await asyncio.sleep(0.025)  # some 5 s in all: several ages

        posting = asyncio.create_task(post_all())
        texts: list[str] = []
        async with asyncio.timeout(40):
            while len(texts) < count:
                event = await alice.events.get()
                if isinstance(event, Message):
                    texts.append(event.text)
                elif isinstance(event, Reconnecting):
                    reasons.append(event.reason)
        await posting
        # Nothing more, no late duplicate: the next message is one posted after.
        await poster.send("bob", "the end", "lobby")
        assert [m.text for m in await alice.messages(1, timeout=20)] == ["the end"]
    assert texts == [f"m{i:03}" for i in range(count)]
    assert any("max connection age" in reason for reason in reasons), reasons


async def test_serve_flags_reach_the_server() -> None:
    """`grpcchat serve --heartbeat --max-connection-age --max-connection-age-grace`."""
    served = ServerProcess(
        "--heartbeat", "0.2", "--max-connection-age", "0.5", "--max-connection-age-grace", "0.5"
    )
    try:
        async with aio.insecure_channel(served.addr) as chan:
            call = pb_grpc.ChatServiceStub(chan).Subscribe(
                pb.SubscribeRequest(name="x", room="lobby")
            )
            responses: list[pb.SubscribeResponse] = []
            with pytest.raises(grpc.RpcError) as failure:
                await asyncio.wait_for(_read_all(call, responses), 10)
        assert sum(not r.events for r in responses) >= 2
        assert failure.value.code() == grpc.StatusCode.UNAVAILABLE
        assert failure.value.details() == "max connection age"
    finally:
        served.stop()


def test_serve_refuses_a_negative_heartbeat() -> None:
    assert run_cli("serve", "--heartbeat", "-1").returncode == 2


async def test_send_of_many_lines_rides_out_connection_ages(
    server_config: ServerConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`grpcchat send` of stdin lines (one session stream, many in flight) across GOAWAYs:
    every line posted exactly once, in order."""
    streams = 0
    connect = ChatSession._connect

    def counting(self: ChatSession, first: bool) -> AsyncIterator[FeedEvent]:
        nonlocal streams
        streams += 1
        return connect(self, first)

    monkeypatch.setattr(ChatSession, "_connect", counting)
    lines: list[str] = []

    async def until_aged_out_twice() -> AsyncIterator[str]:
        """Lines, 100 every 20 ms, until the session's third stream (two connection ages):
        a fixed count of lines once took longer than an age, and then no longer did."""
        while streams < 3 and len(lines) < 9_000:  # under the room's 10,000 kept
            for _ in range(100):
                lines.append(f"line {len(lines):04}")
                yield lines[-1]
            await asyncio.sleep(0.02)

    accepted: list[str] = []
    async with running(server_config, max_connection_age=0.2, max_connection_age_grace=0.1) as (
        server
    ):
        config = ClientConfig(addr=f"127.0.0.1:{server.port}", timeout=10.0)
        count = await asyncio.wait_for(
            send_lines(
                config,
                "bot",
                until_aged_out_twice(),
                lambda sent: accepted.append(sent.message.text),
            ),
            30,
        )
        stored: list[str] = []
        async with _client(server) as reader:
            while page := await reader.history("lobby", limit=1000, after=len(stored)):
                stored += [m.text for m in page]
    assert streams >= 3, f"the connection was aged out {streams - 1} times in {len(lines)} lines"
    assert count == len(lines)
    assert accepted == lines
    assert stored == lines
