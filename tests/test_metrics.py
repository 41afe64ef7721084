"""Prometheus metrics (`grpcchat serve --metrics-port`): a real server, real traffic over gRPC,
and the endpoint scraped over HTTP and parsed with prometheus_client's own parser. Counters must
move by exactly the traffic sent."""

from __future__ import annotations

import asyncio
import socket
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from grpcchat.client import ChatClient
from grpcchat.client.config import ClientConfig
from grpcchat.core.limits import Limits
from grpcchat.core.models import HistoryGap, Position, RoomJoined
from grpcchat.gen.chat.v1 import chat_service_pb2 as pb
from grpcchat.gen.chat.v1 import chat_service_pb2_grpc as pb_grpc
from grpcchat.server import ChatServer
from grpcchat.server.config import ServerConfig
from grpcchat.wire import codec
from tests.conftest import ServerProcess, run_cli
from tests.helpers import Follower

WAIT = 10.0  # seconds any condition below may take


def free_port() -> int:
    """A port nothing listens on (0 means "metrics off", so a test has to pick one)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class Samples(dict[tuple[str, tuple[tuple[str, str], ...]], float]):
    """One scrape: sample name and labels -> value."""

    def get_value(self, name: str, **labels: str) -> float:
        return self[(name, tuple(sorted(labels.items())))]


def scrape_now(port: int) -> Samples:
    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    samples = Samples()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


async def scrape(port: int) -> Samples:
    """Scrape off the event loop: the server under test runs on it."""
    return await asyncio.to_thread(scrape_now, port)


async def until(port: int, condition: Callable[[Samples], bool]) -> Samples:
    """Scrape until `condition` holds (at most WAIT seconds); the scrape that satisfied it."""
    deadline = time.monotonic() + WAIT
    while True:
        samples = await scrape(port)
        if condition(samples):
            return samples
        if time.monotonic() > deadline:
            raise AssertionError(f"metrics never satisfied the condition: {dict(samples)}")
        await asyncio.sleep(0.02)


async def settled(port: int, name: str, **labels: str) -> Samples:
    """Scrape until `name` reads the same twice in a row: nothing is in flight any more."""
    previous = await scrape(port)
    while True:
        samples = await until(port, lambda _: True)
        if samples.get_value(name, **labels) == previous.get_value(name, **labels):
            return samples
        previous = samples


def delta(after: Samples, before: Samples, name: str, **labels: str) -> float:
    return after.get_value(name, **labels) - before.get_value(name, **labels)


@asynccontextmanager
async def metrics_server(limits: Limits | None = None) -> AsyncIterator[ChatServer]:
    config = ServerConfig(
        port=0,
        store="memory://",
        limits=limits or Limits(rate=0, request_rate=0),
        grace_period=0.5,
        metrics_port=free_port(),
    )
    async with ChatServer(config) as server:
        assert server.metrics_port == config.metrics_port
        yield server


@asynccontextmanager
async def client_of(server: ChatServer) -> AsyncIterator[ChatClient]:
    async with ChatClient(ClientConfig(addr=f"127.0.0.1:{server.port}", timeout=5)) as client:
        yield client


async def test_counters_move_by_exactly_the_traffic_sent() -> None:
    async with metrics_server() as server, client_of(server) as client:
        port = server.metrics_port
        idle = await scrape(port)
        assert idle.get_value("grpcchat_sessions", kind="connect") == 0
        assert idle.get_value("grpcchat_draining") == 0
        async with (
            Follower(client.session("alice", "ops")) as alice,
            Follower(client.session("bob", "ops")) as bob,
            Follower(client.session("carol", "ops")) as carol,
        ):
            followers = (alice, bob, carol)
            opened = await until(
                port, lambda s: s.get_value("grpcchat_sessions", kind="connect") == 3
            )
            assert opened.get_value("grpcchat_rooms") == 1
            assert opened.get_value("grpcchat_room_members") == 3
            # One message first: the join notices go out with it, so what follows is the five.
            await client.send("dave", "warm-up", "ops")
            for follower in followers:
                assert [m.text for m in await follower.messages(1)] == ["warm-up"]
            before = await settled(port, "grpcchat_events_delivered_total")

            for i in range(5):
                await client.send("dave", f"m{i}", "ops")
            for follower in followers:
                assert [m.text for m in await follower.messages(5)] == [f"m{i}" for i in range(5)]
            await until(port, lambda s: delta(s, before, "grpcchat_events_delivered_total") >= 15)
            after = await settled(port, "grpcchat_events_delivered_total")

            # 5 messages accepted, written to 3 sessions: 15 events delivered.
            assert delta(after, before, "grpcchat_messages_accepted_total") == 5
            assert delta(after, before, "grpcchat_events_delivered_total") == 15
            # Latency once per written batch (1 to 15 of them), appends once per message.
            batches = delta(after, before, "grpcchat_fanout_latency_seconds_count")
            assert 1 <= batches <= 15
            assert delta(after, before, "grpcchat_fanout_latency_seconds_sum") > 0
            assert delta(after, before, "grpcchat_store_append_seconds_count") == 5
            inf = after.get_value("grpcchat_store_append_seconds_bucket", le="+Inf")
            assert inf == after.get_value("grpcchat_store_append_seconds_count") == 6
            assert after.get_value("grpcchat_queued_events") == 0  # all 15 written

            # A bad room name is refused by the server (the client library would not send it).
            stub = pb_grpc.ChatServiceStub(client.connection.channel)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.Send(pb.SendRequest(sender="dave", text="hi", room="Not A Room!"))
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            refused = await scrape(port)
            code = "INVALID_ARGUMENT"
            assert delta(refused, after, "grpcchat_messages_refused_total", code=code) == 1
            assert delta(refused, after, "grpcchat_messages_accepted_total") == 0
            assert refused.get_value("grpcchat_rate_limited_total", limit="message") == 0

        closed = await until(port, lambda s: s.get_value("grpcchat_sessions", kind="connect") == 0)
        assert closed.get_value("grpcchat_rooms") == 0
        assert closed.get_value("grpcchat_room_members") == 0


async def test_a_rate_limited_send_is_counted_as_refused_and_rate_limited() -> None:
    async with (
        metrics_server(Limits(rate=1, burst=2, request_rate=0)) as server,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        stub = pb_grpc.ChatServiceStub(channel)
        for i in range(2):
            await stub.Send(pb.SendRequest(sender="alice", text=f"burst {i}"))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Send(pb.SendRequest(sender="alice", text="one too many"))
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        samples = await scrape(server.metrics_port)
        assert samples.get_value("grpcchat_messages_accepted_total") == 2
        assert samples.get_value("grpcchat_rate_limited_total", limit="message") == 1
        assert samples.get_value("grpcchat_rate_limited_total", limit="request") == 0
        code = "RESOURCE_EXHAUSTED"
        assert samples.get_value("grpcchat_messages_refused_total", code=code) == 1


async def test_subscribe_resume_gap_and_drain_are_reported() -> None:
    async with metrics_server() as server, client_of(server) as client:
        port = server.metrics_port
        for i in range(3):
            await client.send("bob", f"m{i}")
        # Resuming from a position of another history: a resume, and a gap reported.
        request = pb.SubscribeRequest(room="lobby")
        request.after.CopyFrom(codec.position_to_proto(Position(2, "another-epoch")))
        call = pb_grpc.ChatServiceStub(client.connection.channel).Subscribe(request)
        events = []
        async with asyncio.timeout(WAIT):
            async for response in call:
                events += [codec.event_from_proto(item) for item in response.events]
                if any(isinstance(event, RoomJoined) for event in events):
                    break
        assert isinstance(events[0], HistoryGap)
        subscribed = await until(
            port, lambda s: s.get_value("grpcchat_sessions", kind="subscribe") == 1
        )
        assert subscribed.get_value("grpcchat_resumes_total") == 1
        assert subscribed.get_value("grpcchat_history_gaps_total") == 1
        assert subscribed.get_value("grpcchat_sessions", kind="connect") == 0
        call.cancel()
        await until(port, lambda s: s.get_value("grpcchat_sessions", kind="subscribe") == 0)

        assert (await scrape(port)).get_value("grpcchat_draining") == 0
        server.hub.drain()  # what stopping the server does first
        assert (await scrape(port)).get_value("grpcchat_draining") == 1


async def test_each_server_has_its_own_registry_and_the_endpoint_stops_with_it() -> None:
    async with metrics_server() as first, metrics_server() as second, client_of(first) as client:
        await client.send("alice", "only to the first")
        assert (await scrape(first.metrics_port)).get_value("grpcchat_messages_accepted_total") == 1
        assert (await scrape(second.metrics_port)).get_value(
            "grpcchat_messages_accepted_total"
        ) == 0
        stopped = second.metrics_port
    with pytest.raises(urllib.error.URLError):
        await scrape(stopped)


def test_metrics_port_is_validated() -> None:
    with pytest.raises(ValueError, match="metrics port"):
        ServerConfig(metrics_port=70_000)
    assert ServerConfig().metrics_port == 0  # off by default


def test_serve_metrics_on_a_busy_port_is_a_one_line_error() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = run_cli("serve", "--port", "0", "--store", "memory://", "--metrics-port", str(port))
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "cannot serve metrics" in lines[0]
    assert f":{port}" in lines[0]


def test_serve_metrics_port_from_the_command_line() -> None:
    port = free_port()
    running = ServerProcess("--metrics-port", str(port))
    try:
        samples = scrape_now(port)
        assert samples.get_value("grpcchat_draining") == 0
        assert samples.get_value("grpcchat_sessions", kind="chat") == 0
        assert ("process_cpu_seconds_total", ()) in samples
    finally:
        running.stop()
    assert running.process.returncode == 0
    with pytest.raises(urllib.error.URLError):
        scrape_now(port)


async def test_a_shared_history_reports_its_feed_and_connection(nats_url: str) -> None:
    config = ServerConfig(
        port=0,
        store=f"{nats_url}?stream=CHAT_{uuid.uuid4().hex}",
        limits=Limits(rate=0, request_rate=0),
        grace_period=0.5,
        metrics_port=free_port(),
    )
    async with ChatServer(config) as server:
        samples = await until(
            server.metrics_port, lambda s: s.get_value("grpcchat_room_feed_up") == 1
        )
        assert samples.get_value("grpcchat_store_connected") == 1


async def test_fan_out_is_timed_for_messages_from_the_feed_too(nats_url: str) -> None:
    """On NATS a message another node accepted (and often this node's own, when the feed brings
    it first) reached its readers without being timed: 13 delivered, none observed."""
    store = f"{nats_url}?stream=CHAT_{uuid.uuid4().hex}"
    limits = Limits(rate=0, request_rate=0)
    watched = ServerConfig(
        port=0, store=store, limits=limits, grace_period=0.5, metrics_port=free_port()
    )
    other = ServerConfig(port=0, store=store, limits=limits, grace_period=0.5)
    async with (
        ChatServer(watched) as server,
        ChatServer(other) as elsewhere,
        client_of(server) as client,
        client_of(elsewhere) as sender,
        Follower(client.session("alice", "ops")) as alice,
    ):
        port = server.metrics_port
        before = await settled(port, "grpcchat_events_delivered_total")
        for i in range(3):  # one at a time: a batch each
            await sender.send("bob", f"from the other node {i}", "ops")
            assert [m.text for m in await alice.messages(1)] == [f"from the other node {i}"]
        after = await settled(port, "grpcchat_events_delivered_total")
        assert delta(after, before, "grpcchat_fanout_latency_seconds_count") >= 3


async def test_an_embedded_history_has_no_feed_metrics() -> None:
    async with metrics_server() as server:
        samples = await scrape(server.metrics_port)
        assert samples.get_value("grpcchat_rooms") == 0
        with pytest.raises(KeyError):
            samples.get_value("grpcchat_room_feed_up")
