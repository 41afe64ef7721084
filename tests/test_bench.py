"""The load generator, on a tiny real run: it must count exactly, not be fast."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import re
import socket
import statistics
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import grpc.aio
import pytest
from rich.console import Console

from grpcchat.bench import (
    PHASE_CONNECT,
    PHASE_DRAIN,
    PHASE_PUBLISH,
    PHASE_SERVER,
    BenchConfig,
    BenchResult,
    frames,
    h2,
    run_bench,
)
from grpcchat.bench.config import parse_pids, round_robin
from grpcchat.bench.messages import WorkerSpec
from grpcchat.bench.publish_v1 import Echoes
from grpcchat.bench.worker import Subscriber, _Worker
from grpcchat.cli.bench_report import (
    comparison_markdown,
    comparison_rows,
    default_config_line,
    render_result,
)
from grpcchat.client import ChatClient
from grpcchat.client.config import AddressError
from grpcchat.core.errors import RemoteError
from grpcchat.core.limits import Limits
from grpcchat.gen.chat.v1 import chat_service_pb2 as pb
from grpcchat.server import ChatServer
from grpcchat.server.config import ServerConfig
from grpcchat.wire.codec import SENDS_HEADER
from tests.conftest import run_cli_async


def _check_exact(result: BenchResult, subscribers: int) -> None:
    assert result.sent > 0
    assert result.send_errors == 0
    assert result.expected == result.sent * subscribers
    assert result.delivered == result.expected
    assert result.lost == 0
    assert result.duplicates == 0
    assert result.disconnects == 0
    assert result.ok
    latency = result.latency
    assert latency is not None
    assert 0 < latency.p50 <= latency.p90 <= latency.p99 <= latency.max
    assert result.deliveries_per_second > 0


async def test_every_subscriber_gets_every_message_once(addr: str) -> None:
    seen: list[tuple[str, float]] = []
    config = BenchConfig(addr=addr, subscribers=3, publishers=1, rate=50, duration=1.5, processes=1)

    result = await run_bench(config, lambda phase, done: seen.append((phase, done)))

    _check_exact(result, subscribers=3)
    assert result.addr == addr
    # At 50 msg/s for 1.5 s: 75 sends, give or take the last one on a busy machine.
    assert 70 <= result.sent <= 75
    phases = [phase for phase, _ in seen]
    assert PHASE_SERVER not in phases  # a server was given
    firsts = [phases.index(p) for p in (PHASE_CONNECT, PHASE_PUBLISH, PHASE_DRAIN)]
    assert firsts == sorted(firsts)
    assert all(0.0 <= done <= 1.0 for _, done in seen)
    assert seen[-1] == (PHASE_DRAIN, 1.0)

    console = Console(record=True, width=120, color_system=None)
    console.print(render_result(result))
    text = console.export_text()
    assert f"{result.delivered:,}" in text
    assert "p99" in text


async def test_the_room_may_be_typed_as_it_is_printed(addr: str, client: ChatClient) -> None:
    """`--room '#ops'`, as every other command takes it, was refused as a room name."""
    args = ("--addr", addr, "--room", "#benchroom", "-s", "1", "-p", "1", "--rate", "20")
    done = await run_cli_async(
        "bench", *args, "-d", "0.5", "--processes", "1", "--drain", "2", "--json", timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["lost"] == 0
    assert await client.history("benchroom", limit=1)  # its messages are real


@contextlib.asynccontextmanager
async def _two_nodes(nats_url: str) -> AsyncIterator[tuple[ChatServer, ChatServer]]:
    """Two servers on one NATS JetStream history: one chat (as tests/test_cross_node.py)."""
    store = f"{nats_url}?stream=CHAT_{uuid.uuid4().hex}"
    config = ServerConfig(
        port=0, store=store, limits=Limits(rate=0, request_rate=0), grace_period=1.0
    )
    async with ChatServer(config) as a, ChatServer(config) as b:
        yield a, b


async def test_several_nodes_measured_as_one_chat(nats_url: str) -> None:
    async with _two_nodes(nats_url) as (a, b):
        addrs = (f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}")
        # Each node's peak of registered sessions during the run: the load reached both.
        peaks = [0, 0]

        async def watch() -> None:
            while True:
                for n, node in enumerate((a, b)):
                    peaks[n] = max(peaks[n], node.hub.registered_sessions)
                await asyncio.sleep(0.01)

        watcher = asyncio.create_task(watch())
        config = BenchConfig(
            addr=",".join(addrs), subscribers=4, publishers=2, rate=30, duration=1.0, processes=1
        )
        try:
            result = await run_bench(config)
        finally:
            watcher.cancel()
        history = await a.hub.history("bench", limit=1000)

    # Every subscriber got every message accepted by either node, once.
    _check_exact(result, subscribers=4)
    assert result.addr == ",".join(addrs)
    assert result.addrs == addrs
    # Two subscribers (s0, s2) and one publisher (p0) on the first node, the rest on the second.
    assert [(n.addr, n.subscribers, n.publishers) for n in result.nodes] == [
        (addrs[0], 2, 1),
        (addrs[1], 2, 1),
    ]
    assert all(n.accepted > 0 and n.lost == 0 for n in result.nodes)
    assert sum(n.accepted for n in result.nodes) == result.sent
    for node in result.nodes:
        assert node.delivered == node.subscribers * result.sent
    assert min(peaks) >= 2, peaks  # both nodes had sessions
    senders = {m.sender for m in history if m.sender.startswith("bench-")}
    assert {sender.rsplit("-", 1)[1] for sender in senders} >= {"p0", "p1"}

    summary = json.loads(json.dumps(result.as_json(), default=str))
    assert summary["addr"] == summary["target"] == ",".join(addrs)
    assert summary["addrs"] == list(addrs)
    assert [n["addr"] for n in summary["nodes"]] == list(addrs)

    console = Console(record=True, width=140, color_system=None)
    console.print(render_result(result))
    text = console.export_text()
    assert "2 nodes" in text
    assert all(addr in text for addr in addrs)
    assert "2 subscribers: " in text

    # One pid per node: the server's CPU is their sum, each named by its node's address.
    measured = dataclasses.replace(
        result,
        config=dataclasses.replace(config, server_pid=(11, 22)),
        cpu=dataclasses.replace(result.cpu, server=70.0, servers=(30.0, 40.0)),
    )
    console.print(render_result(measured))
    text = console.export_text()
    assert f"70% │ sum of 2 processes: {addrs[0]} 30%, {addrs[1]} 40%" in text


async def test_starts_its_own_server_and_stops_it() -> None:
    result = await run_bench(
        BenchConfig(subscribers=2, publishers=2, rate=20, duration=0.5, processes=1)
    )

    _check_exact(result, subscribers=2)
    match = re.fullmatch(r"127\.0\.0\.1:(\d+)", result.addr)
    assert match is not None
    # Its own server's CPU is measured (a server it did not start is not its to measure).
    assert result.cpu.server is not None
    assert result.cpu.server >= 0
    # The server process is gone: nothing listens on its port any more.
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", int(match.group(1))), timeout=2).close()


async def test_its_own_server_ignores_the_user_s_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """With GRPCCHAT_AUTH_SECRET exported (as the README's token section has users do), its own
    server required a token the benchmark does not have."""
    monkeypatch.setenv("GRPCCHAT_AUTH_SECRET", "s" * 32)
    monkeypatch.setenv("GRPCCHAT_WORKERS", "2")
    result = await run_bench(
        BenchConfig(subscribers=2, publishers=1, rate=20, duration=0.5, processes=1)
    )
    _check_exact(result, subscribers=2)


async def test_unreachable_server_is_an_error_not_a_hang() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = BenchConfig(
        addr=f"127.0.0.1:{port}", subscribers=1, duration=1, processes=1, connect_timeout=20
    )
    started = time.monotonic()
    with pytest.raises(RemoteError) as caught:
        await run_bench(config)
    assert caught.value.status == "UNAVAILABLE"
    # Said at once, not after connect_timeout: nothing listens there.
    assert str(caught.value).endswith("(Connection refused)")
    assert time.monotonic() - started < 10


async def test_a_port_that_does_not_speak_grpc_is_an_error_not_a_hang() -> None:
    """An HTTP server (the metrics port, say): silence for connect_timeout, then no reason."""

    async def http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(http, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    config = BenchConfig(
        addr=f"127.0.0.1:{port}", subscribers=1, duration=1, processes=1, connect_timeout=20
    )
    started = time.monotonic()
    try:
        with pytest.raises(RemoteError) as caught:
            await run_bench(config)
    finally:
        server.close()
    assert caught.value.status == "UNAVAILABLE"
    assert "Failed parsing HTTP/2" in str(caught.value)
    assert time.monotonic() - started < 10  # said at once, not after connect_timeout


async def test_a_server_that_requires_tokens_is_a_clear_error() -> None:
    """The server's own words said to pass --token, which the bench has not."""
    config = ServerConfig(port=0, store="memory://", auth_secret="b" * 32)
    async with ChatServer(config) as server:
        bench = BenchConfig(addr=f"127.0.0.1:{server.port}", subscribers=1, duration=1, processes=1)
        with pytest.raises(RemoteError) as caught:
            await run_bench(bench)
    assert caught.value.status == "UNAUTHENTICATED"
    assert str(caught.value) == (
        f"the server at 127.0.0.1:{server.port} requires authentication, and the bench has no "
        "tokens to present: load a server without --auth-secret"
    )


@pytest.mark.parametrize(
    "bad",
    [
        {"subscribers": 0},
        {"publishers": 0},
        {"rate": -1},
        {"rate": float("nan")},
        {"duration": 0},
        {"duration": float("inf")},
        {"room": "Not A Room"},
        {"processes": 0},
        {"subscribers": 2, "processes": 3},
        {"message_size": 0},
        {"message_size": 100_000},
        {"max_in_flight": 0},
        {"connect_timeout": 0},
        {"drain_timeout": -1},
        {"send_timeout": 0},
        {"addr": " "},
        {"addr": "127.0.0.1:4000", "server_args": ("--rate", "0")},
        {"message_size": frames.MIN_MESSAGE_SIZE - 1},
        {"protocol": "v2"},
        {"protocol": "v1", "publish": "unary"},
        {"protocol": "v1", "room": "bench"},
        {"publish": "sometimes"},
        {"reader": "telepathy"},
        {"slow": -1},
        {"server_pid": 123},
        {"addr": "127.0.0.1:4000,,127.0.0.1:4001"},
        {"addr": "127.0.0.1:4000,127.0.0.1:4000"},
        {"addr": "127.0.0.1:4000,nope"},
        {"addr": "127.0.0.1:4000", "server_pid": ()},
        {"addr": "127.0.0.1:4000", "server_pid": (12, 0)},
        {"addr": "127.0.0.1:4000", "server_pid": (12, 12)},
    ],
)
def test_config_refuses_nonsense(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - each case has its own message
        BenchConfig(**bad)


def test_config_defaults_and_worker_count() -> None:
    config = BenchConfig()
    assert config.addr is None
    assert config.subscribers == 50
    assert 1 <= config.worker_processes <= config.subscribers
    assert BenchConfig(subscribers=1).worker_processes == 1
    assert BenchConfig(subscribers=10, processes=3).worker_processes == 3
    assert BenchConfig(rate=0).rate == 0  # as fast as possible
    assert (config.addrs, config.target, config.server_pids) == ((), "spawned grpcchat", ())


def test_several_addresses_share_the_load_round_robin() -> None:
    config = BenchConfig(addr="127.0.0.1:4000, 127.0.0.1:4001", server_pid=(12, 34))
    assert config.addrs == ("127.0.0.1:4000", "127.0.0.1:4001")
    assert config.target == "127.0.0.1:4000,127.0.0.1:4001"
    assert config.server_pids == (12, 34)
    assert BenchConfig(addr="127.0.0.1:4000", server_pid=12).server_pids == (12,)
    a, b, c = "a:1", "b:2", "c:3"
    assert round_robin(5, (a, b)) == (a, b, a, b, a)
    assert round_robin(4, (a, b, c)) == (a, b, c, a)
    assert round_robin(2, (a,)) == (a, a)
    assert round_robin(0, (a, b)) == ()
    assert parse_pids("123") == 123
    assert parse_pids("123, 456") == (123, 456)
    for bad in ("", "12,", "x", "0", "-3"):
        with pytest.raises(ValueError, match="--server-pid"):
            parse_pids(bad)
    with pytest.raises(AddressError, match="empty entry"):
        BenchConfig(addr="127.0.0.1:4000,")


def test_a_malformed_address_list_is_a_one_line_usage_error() -> None:
    from typer.testing import CliRunner

    from grpcchat.cli.app import app

    cases = (
        (["--addr", "127.0.0.1:4000,,127.0.0.1:4001"], "empty entry"),
        (["--addr", "127.0.0.1:4000,localhost"], "'localhost' is not host:port"),
        (["--addr", "127.0.0.1:4000,127.0.0.1:4001", "--server-pid", "1,x"], "--server-pid"),
    )
    for args, says in cases:
        result = CliRunner().invoke(app, ["bench", *args])
        assert result.exit_code == 2, result.output
        assert says in result.output
        assert len(result.output.strip().splitlines()) == 1, result.output


# -- what the bench puts on the wire -------------------------------------------------------------


def test_hand_encoded_requests_match_the_generated_classes() -> None:
    text = frames.message_text("abc123", 7, 42, 64)
    assert len(text) == 64
    assert frames.marker_pattern("abc123").findall(text)[0][:2] == (b"7", b"42")

    message = pb.ChatMessage.FromString(frames.chat_message("bob", text))
    assert (message.sender, message.text.encode()) == ("bob", text)
    assert abs(message.sent_at.ToNanoseconds() - time.time_ns()) < 5e9

    send = pb.SendRequest(sender="bob", text="hi", room="r", key="k1")
    assert frames.send_request(b"hi", "r", "k1", "bob") == send.SerializeToString()
    subscribe = pb.SubscribeRequest(name="s0", room="bench")
    assert frames.subscribe_request("s0", "bench") == subscribe.SerializeToString()
    hello = pb.ConnectRequest(hello=pb.Hello(name="p0"))
    assert frames.hello("p0") == hello.SerializeToString()
    on_session = pb.ConnectRequest(send=pb.SendRequest(text="hi", room="r", key="3"))
    assert frames.send_on_session(b"hi", "r", "3") == on_session.SerializeToString()
    probe = pb.ConnectRequest(send=pb.SendRequest())
    assert frames.send_on_session(b"", "", "") == probe.SerializeToString()
    two = [frames.send_request(b"a", "r", "1"), frames.send_request(b"b", "r", "2")]
    packed = pb.ConnectRequest(
        sends=pb.SendBatch(sends=[pb.SendRequest(text=t, room="r", key=k) for t, k in ("a1", "b2")])
    )
    assert frames.wrap_sends(two) == packed.SerializeToString()


def test_acks_and_refusals_are_read_from_a_connect_response() -> None:
    response = pb.ConnectResponse(
        events=[
            pb.Event(message=pb.ChatMessage(text="not an ack")),
            pb.Event(ack=pb.SendAck(key="1", message=pb.ChatMessage(text="x"))),
            pb.Event(ack=pb.SendAck(key="2", code="RESOURCE_EXHAUSTED", retry_after_ms=250)),
            pb.Event(refused=pb.RequestRefused(room="r", code="INVALID_ARGUMENT", reason="no")),
        ]
    )
    assert list(frames.session_events(response.SerializeToString())) == [
        frames.Ack("1", "", "", 0),
        frames.Ack("2", "RESOURCE_EXHAUSTED", "", 250),
        frames.Refused("r", "INVALID_ARGUMENT", "no"),
    ]


def test_a_marker_split_across_chunks_is_counted_once() -> None:
    """Data arrives in chunks cut anywhere (HTTP/2 frames, socket reads): every cut position
    through two messages counts each of them exactly once."""
    run = "d00d00"
    data = b"".join(
        h2.grpc_message(frames.chat_message("p", frames.message_text(run, 0, seq, 64)))
        for seq in range(2)
    )
    spec = WorkerSpec(0, "v1", "lobby", ("s",), ("127.0.0.1:1",), (), (), run, "h2", 1.0)
    for cut in range(1, len(data)):
        worker = _Worker(spec, None, None)  # type: ignore[arg-type]  # queues are not used
        subscriber = Subscriber("s")
        scan = worker._scanner(subscriber, None)
        scan(data[:cut])
        scan(data[cut:])
        assert (subscriber.delivered, subscriber.duplicates) == (2, 0), cut


async def test_a_v1_publisher_counts_its_own_echoes_even_split_across_chunks() -> None:
    mine = frames.message_text("r1", 3, 0, 40) + frames.message_text("r1", 3, 1, 40)
    others = frames.message_text("r1", 13, 0, 40) + frames.message_text("r1", 4, 0, 40)
    data = others + mine
    for cut in range(1, len(data)):
        window = asyncio.Semaphore(2)
        echoes = Echoes("r1", 3, window)
        await echoes.sent()
        await echoes.sent()
        assert window.locked()  # two in flight: the window is full
        echoes.scan(data[:cut])
        echoes.scan(data[cut:])
        assert echoes.unanswered == 0, cut
        echoes.scan(mine)  # more echoes than were sent (a server that duplicates)
        assert echoes.unanswered == 0
        assert window._value == 2, cut  # each place freed exactly once


# -- counting against servers that get it wrong -------------------------------------------------


class _FaultyV1Server:
    """The article's server (Chat only, broadcast to every stream, sender included), except that
    it drops every `drop_every`-th message or sends message number `duplicate` twice. Pings of
    the bench always go through; only data messages are numbered."""

    def __init__(self, *, drop_every: int = 0, duplicate: int = 0, delay: float = 0.0) -> None:
        self.drop_every = drop_every
        self.duplicate = duplicate
        self.delay = delay  # seconds a message waits before it goes to the other streams
        self._later: set[asyncio.Task[None]] = set()
        self.received = 0
        self._streams: dict[int, Any] = {}
        self._lock = asyncio.Lock()

    async def chat(self, requests: AsyncIterator[bytes], context: Any) -> None:
        key = id(context)
        self._streams[key] = context
        try:
            async for data in requests:
                text = pb.ChatMessage.FromString(data).text
                copies = 1
                if "/ping>" not in text:
                    self.received += 1
                    if self.drop_every and self.received % self.drop_every == 0:
                        copies = 0
                    elif self.received == self.duplicate:
                        copies = 2
                if self.delay and "/ping>" not in text:  # the sender's echo at once
                    await self._broadcast(data, copies, only=key)
                    task = asyncio.create_task(self._broadcast(data, copies, self.delay, key))
                    self._later.add(task)
                    task.add_done_callback(self._later.discard)
                else:
                    await self._broadcast(data, copies)
        finally:
            del self._streams[key]

    async def _broadcast(
        self, data: bytes, copies: int, after: float = 0.0, but: int = 0, only: int = 0
    ) -> None:
        await asyncio.sleep(after)
        async with self._lock:
            for key, stream in list(self._streams.items()):
                if key == but or (only and key != only):
                    continue
                for _ in range(copies):
                    with contextlib.suppress(Exception):
                        await stream.write(data)


@contextlib.asynccontextmanager
async def _raw_server(handlers: dict[str, grpc.RpcMethodHandler]) -> AsyncIterator[str]:
    """A ChatService of these handlers (raw bytes both ways) on a free port: its address."""
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("chat.v1.ChatService", handlers),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(0)


@contextlib.asynccontextmanager
async def _faulty_server(**faults: int) -> AsyncIterator[tuple[str, _FaultyV1Server]]:
    servicer = _FaultyV1Server(**faults)
    async with _raw_server({"Chat": grpc.stream_stream_rpc_method_handler(servicer.chat)}) as addr:
        yield addr, servicer


def _v1_config(addr: str, reader: str) -> BenchConfig:
    return BenchConfig(
        addr=addr,
        protocol="v1",
        reader=reader,
        subscribers=3,
        publishers=2,
        rate=40,
        duration=1.0,
        processes=1,
        drain_timeout=3.0,
        send_timeout=2.0,  # how long a publisher waits for echoes the server dropped
    )


@pytest.mark.parametrize("reader", ["h2", "grpc"])
async def test_counts_exactly_what_a_lossy_server_drops(reader: str) -> None:
    async with _faulty_server(drop_every=10) as (addr, servicer):
        result = await run_bench(_v1_config(addr, reader))

    assert result.sent == servicer.received  # every write reached the server
    assert result.sent >= 70
    dropped = result.sent // 10
    assert result.lost == 3 * dropped
    assert result.delivered == 3 * (result.sent - dropped)
    assert result.expected == 3 * result.sent
    assert result.duplicates == 0
    assert not result.ok


async def test_a_server_slow_to_fan_out_loses_nothing_within_the_drain() -> None:
    """Nothing arrives for 3 s, then everything: the drain ended after 2 s without a delivery
    whatever --drain said, and counted it all as lost."""
    async with _faulty_server(delay=3.0) as (addr, _):
        config = BenchConfig(
            addr=addr, protocol="v1", subscribers=2, publishers=1, rate=20, duration=1.0,
            processes=1, drain_timeout=10.0,
        )  # fmt: skip
        result = await run_bench(config)
    assert result.expected == 2 * result.sent >= 2 * 15
    assert (result.delivered, result.lost) == (result.expected, 0)


@pytest.mark.parametrize("reader", ["h2", "grpc"])
async def test_counts_exactly_what_a_server_sends_twice(reader: str) -> None:
    async with _faulty_server(duplicate=5) as (addr, servicer):
        result = await run_bench(_v1_config(addr, reader))

    assert result.sent == servicer.received
    assert result.duplicates == 3  # message 5, once more to each subscriber
    assert result.lost == 0
    assert result.delivered == result.expected == 3 * result.sent
    assert not result.ok


class _PackCounter:
    """A native server that records how many sends each Connect request carries and acks a
    request's sends together, in one response. It delivers nothing: only requests matter."""

    def __init__(self) -> None:
        self.packs: list[int] = []

    async def subscribe(self, request: bytes, context: Any) -> None:
        await context.send_initial_metadata(())
        await asyncio.Event().wait()  # open until the bench leaves or the server stops

    async def connect(self, requests: AsyncIterator[bytes], context: Any) -> None:
        await context.send_initial_metadata((SENDS_HEADER,))
        async for data in requests:
            request = pb.ConnectRequest.FromString(data)
            sends = [request.send] if request.HasField("send") else list(request.sends.sends)
            if sends:
                self.packs.append(len(sends))
                events = [pb.Event(ack=pb.SendAck(key=send.key)) for send in sends]
                await context.write(pb.ConnectResponse(events=events).SerializeToString())


async def test_native_publishers_pack_the_sends_a_freed_window_lets_out() -> None:
    """Sends waiting together go out as one request, as the client library's do: the bench once
    made each send a task of its own (`wait_for`), so the window's 64 went out 1.7 a request and
    the server under test spent a sixth of its loop reading them."""
    counter = _PackCounter()
    handlers = {
        "Subscribe": grpc.unary_stream_rpc_method_handler(counter.subscribe),
        "Connect": grpc.stream_stream_rpc_method_handler(counter.connect),
    }
    async with _raw_server(handlers) as addr:
        config = BenchConfig(
            addr=addr,
            publish="stream",
            subscribers=1,
            rate=0,
            duration=0.5,
            processes=1,
            max_in_flight=16,
            drain_timeout=0.2,
            send_timeout=2.0,
        )
        result = await run_bench(config)

    assert result.sent == sum(counter.packs) > 16 * 4
    assert statistics.median(counter.packs) == 16, counter.packs[:20]


# -- the protocols against grpcchat ---------------------------------------------------------------


async def test_v1_against_grpcchat(addr: str) -> None:
    config = BenchConfig(
        addr=addr, protocol="v1", subscribers=3, publishers=2, rate=30, duration=1, processes=1
    )
    result = await run_bench(config)

    _check_exact(result, subscribers=3)
    assert result.publish_mode == "v1 stream"
    summary = json.loads(json.dumps(result.as_json(), default=str))
    for key in ("deliveries_per_s", "lost", "duplicates", "sent", "subscribers", "slow"):
        assert key in summary
    assert set(summary["latency_ms"]) == {"p50", "p90", "p99", "max"}
    assert (summary["protocol"], summary["target"]) == ("v1", addr)


async def test_native_stream_publishing_and_a_never_reading_session(addr: str) -> None:
    config = BenchConfig(addr=addr, subscribers=2, rate=30, duration=1, processes=1, slow=1)
    result = await run_bench(config)

    _check_exact(result, subscribers=2)
    assert result.publish_mode == "stream"  # the server answers SendAck
    assert result.slow_connected == 1
    assert result.as_json()["slow"] == 1


async def test_native_unary_publishing_with_grpc_readers(addr: str) -> None:
    config = BenchConfig(
        addr=addr, subscribers=2, rate=30, duration=1, processes=1, publish="unary", reader="grpc"
    )
    result = await run_bench(config)

    _check_exact(result, subscribers=2)
    assert result.publish_mode == "unary"


async def test_native_against_a_v1_only_server_says_so() -> None:
    async with _faulty_server() as (addr, _):
        with pytest.raises(RemoteError) as caught:
            await run_bench(BenchConfig(addr=addr, subscribers=1, duration=1, processes=1))
    assert caught.value.status == "UNIMPLEMENTED"
    assert "--protocol v1" in str(caught.value)


def test_the_nox_comparison_table_shows_ratios_and_failures() -> None:
    def run(dps: float, **extra: Any) -> dict[str, Any]:
        return {"deliveries_per_s": dps, "latency_ms": {"p99": 12.0}, "lost": 0, **extra}

    report: dict[str, Any] = {
        "machine": "test box",
        "scenarios": [
            {"name": "(a)", "runs": {"go": run(1000), "native": run(500), "v1": run(2000, lost=3)}},
            {"name": "(b)", "runs": {"native": run(10), "v1": {"error": "boom"}}},
        ],
    }
    rows = comparison_rows(report["scenarios"])
    assert rows[0] == [
        "(a)",
        "1,000/s, p99 12 ms (1.00x)",
        "500/s, p99 12 ms (0.50x)",
        "2,000/s, p99 12 ms (2.00x); lost 3",
    ]
    assert rows[1] == ["(b)", "-", "10/s, p99 12 ms", "failed: boom"]
    markdown = comparison_markdown(report)
    assert markdown.splitlines()[0] == (
        "| scenario | Go seed (v1) | grpcchat native | grpcchat v1 |"
    )
    assert "Measured on: test box." in markdown
    assert "Default configuration" not in markdown  # not measured: no line


def test_the_nox_report_compares_the_default_config_with_the_memory_store() -> None:
    def run(dps: float) -> dict[str, Any]:
        return {"deliveries_per_s": dps, "latency_ms": {"p99": 30.0}, "lost": 0}

    report: dict[str, Any] = {
        "machine": "test box",
        "scenarios": [{"name": "(a)", "runs": {"go": run(900), "native": run(800)}}],
        "default_config": {"scenario": "(a)", "run": run(600)},
    }
    line = default_config_line(report)
    assert line == (
        "Default configuration, (a), native: 600/s, p99 30 ms, 0.75x the memory store with "
        "--quiet (800/s; target 0.80x)"
    )
    assert f"\n{line}.\n" in comparison_markdown(report)
    report["default_config"]["run"] = {"error": "boom"}
    assert default_config_line(report) == "Default configuration, (a), native: failed: boom"
    report["default_config"]["run"] = run(600)
    report["scenarios"][0]["runs"]["native"] = {"error": "boom"}  # no baseline: no ratio
    assert default_config_line(report) == "Default configuration, (a), native: 600/s, p99 30 ms"
