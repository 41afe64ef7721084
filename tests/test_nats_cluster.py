"""NATS failures under running chat servers: the stream leader of a 3-node JetStream cluster
killed while clients chat (nothing acknowledged lost or doubled), and nats-server stopped and
started again under a node (health NOT_SERVING and back, sessions and sends refused with
UNAVAILABLE meanwhile, nothing acknowledged lost, a resumed session gets what it missed).

Every wait is bounded and waits for a marker (a health status, an event, a count), never for
silence. Timings are printed (`pytest -s` shows them)."""

from __future__ import annotations

import asyncio
import shutil
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

import grpc
import nats
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from grpcchat.client import ChatClient, Reconnecting
from grpcchat.client.config import ClientConfig
from grpcchat.core.errors import HistoryReplaced, RemoteError, StoreError
from grpcchat.core.history import Retention
from grpcchat.core.limits import Limits
from grpcchat.core.models import Message, Position, RequestRefused, RoomJoined
from grpcchat.gen.chat.v1 import chat_service_pb2 as pb
from grpcchat.gen.chat.v1 import chat_service_pb2_grpc as pb_grpc
from grpcchat.server import ChatServer
from grpcchat.server.config import ServerConfig
from grpcchat.store.nats import NatsStore, feed
from grpcchat.wire import codec
from tests.helpers import Follower
from tests.natsfixture import NatsCluster, NatsNode
from tests.test_resume import Collector

pytest.importorskip("nats")
# Each takes under ~15 s here (a leader election is 4-9 s); the waits inside are bounded too.
pytestmark = pytest.mark.timeout(45)

ROOM = "ops"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def chat_config(store: str) -> ServerConfig:
    return ServerConfig(
        port=0, store=store, limits=Limits(rate=0, request_rate=0), grace_period=1.0
    )


async def health(addr: str) -> int:
    async with grpc.aio.insecure_channel(addr) as channel:
        response = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=2.0
        )
        status: int = response.status
        return status


async def until_health(addr: str, status: int, timeout: float) -> float:
    """Seconds until the server's health says `status` (polled: health is a unary call)."""
    started = time.monotonic()
    async with asyncio.timeout(timeout):
        while await health(addr) != status:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    return time.monotonic() - started


async def raw_send(addr: str, text: str) -> grpc.StatusCode:
    """One unary Send, no retries: its status."""
    async with grpc.aio.insecure_channel(addr) as channel:
        try:
            await pb_grpc.ChatServiceStub(channel).Send(
                pb.SendRequest(sender="probe", text=text, room=ROOM, key=uuid.uuid4().hex),
                timeout=10.0,
            )
        except grpc.RpcError as error:
            code: grpc.StatusCode = error.code()
            return code
    return grpc.StatusCode.OK


async def raw_join(
    addr: str,
    after: Position | None = None,
    count: int = 0,
    in_room: asyncio.Event | None = None,
) -> Joined:
    """A Connect stream joining ROOM (after `after`, no history): until its RoomJoined (`count`
    0) or its first `count` messages, or its refusal. Sets `in_room` at the RoomJoined."""
    requests: asyncio.Queue[pb.ConnectRequest | None] = asyncio.Queue()
    requests.put_nowait(pb.ConnectRequest(hello=pb.Hello(name=f"j{uuid.uuid4().hex[:8]}")))
    join = pb.JoinRoom(room=ROOM, history=0)
    if after is not None:
        join.after.CopyFrom(codec.position_to_proto(after))
    requests.put_nowait(pb.ConnectRequest(join=join))

    async def outgoing() -> AsyncIterator[pb.ConnectRequest]:
        while (request := await requests.get()) is not None:
            yield request

    joined = Joined()
    async with grpc.aio.insecure_channel(addr) as channel:
        call = pb_grpc.ChatServiceStub(channel).Connect(outgoing())
        try:
            async for response in call:
                for item in response.events:
                    event = codec.event_from_proto(item)
                    if isinstance(event, RequestRefused):
                        joined.refused = event.code
                        requests.put_nowait(None)  # half-close: the server ends the call
                    elif isinstance(event, Message):
                        joined.messages.append(event)
                    elif isinstance(event, RoomJoined):
                        if in_room is not None:
                            in_room.set()
                        if not count:
                            call.cancel()
                            return joined
                    if count and len(joined.messages) >= count:
                        call.cancel()
                        return joined
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.CANCELLED:
                joined.status = error.code().name
        finally:
            requests.put_nowait(None)
    return joined


@dataclass
class Joined:
    messages: list[Message] = field(default_factory=list)
    refused: str = ""  # the RequestRefused's code, if the session or join was refused
    status: str = ""  # how the call ended, if not cancelled by us


# -- NATS stopped and started again under a running node ------------------------------------

BEFORE, AFTER = 10, 8


async def test_nats_restart_under_a_running_node(restartable_nats: NatsNode) -> None:
    store = f"{restartable_nats.url}?stream=CHAT_{uuid.uuid4().hex}"
    async with asyncio.timeout(45), ChatServer(chat_config(store)) as server:
        addr = f"127.0.0.1:{server.port}"
        assert await health(addr) == SERVING  # `start` returns once the feed is subscribed
        async with (
            ChatClient(ClientConfig(addr=addr, timeout=5)) as sender,
            ChatClient(ClientConfig(addr=addr, timeout=5)) as client,
        ):
            async with Collector(client.session("alice", ROOM, history=0)) as alice:
                acked = [
                    (await sender.send("bob", f"before {i}", ROOM)).message for i in range(BEFORE)
                ]
                await alice.until(lambda: len(alice.messages()) >= BEFORE)
                last_before = acked[-1].position

                # Stop nats-server: the node notices at once (the TCP connection closes).
                stopped = time.monotonic()
                await asyncio.to_thread(restartable_nats.stop)
                detected = await until_health(addr, NOT_SERVING, timeout=10)
                # The session ends with UNAVAILABLE (its client would try the next address).
                await alice.until(lambda: alice.count(Reconnecting) >= 1, timeout=10)
                ended = time.monotonic() - stopped
                reasons = [e.reason for e in alice.events if isinstance(e, Reconnecting)]
                assert "NATS" in reasons[0], reasons
                # New work is refused with UNAVAILABLE at once, not hung, not INTERNAL.
                asked = time.monotonic()
                assert await raw_send(addr, "during") == grpc.StatusCode.UNAVAILABLE
                refusal = await raw_join(addr)
                assert (refusal.refused, refusal.status) == ("UNAVAILABLE", "UNAVAILABLE")
                refused_in = time.monotonic() - asked
                assert refused_in < 2.0
                with pytest.raises(RemoteError) as refused:
                    await ChatClient(ClientConfig(addr=addr, timeout=1)).send("bob", "x", ROOM)
                assert refused.value.status in ("UNAVAILABLE", "DEADLINE_EXCEEDED")
                # Who is in a room is not known meanwhile (it answered this node's half).
                with pytest.raises(RemoteError) as unknown:
                    await sender.members(ROOM)
                assert unknown.value.status == "UNAVAILABLE"

                # Start it again on the same port and data: SERVING again, nothing lost.
                restarted = time.monotonic()
                await asyncio.to_thread(restartable_nats.start)
                recovered = await until_health(addr, SERVING, timeout=20)
                print(
                    f"\nNATS restart: NOT_SERVING {detected:.2f}s after the stop, session ended "
                    f"{ended:.2f}s after; refusals took {refused_in:.3f}s; SERVING "
                    f"{recovered:.2f}s after the restart ({time.monotonic() - restarted:.2f}s)"
                )
                history = await sender.history(ROOM, limit=100)
                assert [m.id for m in history] == [m.id for m in acked]

                # New messages flow; the reconnecting session resumes with exactly those.
                for i in range(AFTER):
                    acked.append((await sender.send("bob", f"after {i}", ROOM)).message)
                await alice.until(lambda: len(alice.messages()) >= BEFORE + AFTER, timeout=15)
                # A session resuming from its last position before the outage gets just those.
                resumed = await raw_join(addr, after=last_before, count=AFTER)
                assert [m.id for m in resumed.messages] == [m.id for m in acked[BEFORE:]]
                # A new session joins, and gets new messages live.
                in_room = asyncio.Event()
                joiner = asyncio.create_task(raw_join(addr, count=1, in_room=in_room))
                await asyncio.wait_for(in_room.wait(), 10)
                latest = (await sender.send("bob", "to the newcomer", ROOM)).message
                acked.append(latest)
                joined = await asyncio.wait_for(joiner, 10)
                assert [m.id for m in joined.messages] == [latest.id]
                await alice.until(lambda: len(alice.messages()) >= len(acked), timeout=10)
            assert [m.id for m in alice.messages()] == [m.id for m in acked]
            history = await sender.history(ROOM, limit=100)
            assert [m.id for m in history] == [m.id for m in acked]
            assert [m.seq for m in history] == list(range(1, len(acked) + 1))


async def test_a_session_send_the_history_cannot_take_is_sent_again_once_nats_is_back(
    restartable_nats: NatsNode,
) -> None:
    """Written on a session while NATS is gone, a send was answered UNAVAILABLE and given up
    at once, though a unary send waits for NATS within --timeout."""
    store = f"{restartable_nats.url}?stream=CHAT_{uuid.uuid4().hex}"
    async with asyncio.timeout(45), ChatServer(chat_config(store)) as server:
        addr = f"127.0.0.1:{server.port}"
        async with (
            ChatClient(ClientConfig(addr=addr, timeout=20)) as client,
            Collector(client.session("alice", ROOM, history=0)) as alice,
        ):
            before = await alice.session.send("before", ROOM)
            await asyncio.to_thread(restartable_nats.stop)
            await asyncio.sleep(0.3)  # the node knows; its sessions are not all ended yet
            written = [f"during {i}" for i in range(3)]  # in flight together, refused together
            during = asyncio.gather(*(alice.session.send(text, ROOM) for text in written))
            await asyncio.sleep(1.0)
            await asyncio.to_thread(restartable_nats.start)
            sent = await during
            assert [s.message.text for s in sent] == written
            history = await client.history(ROOM, limit=10)
            assert [m.text for m in history] == ["before", *written]  # in the order written
            assert [m.id for m in history] == [before.message.id, *(s.message.id for s in sent)]


async def test_a_node_whose_history_nats_lost_stops_rather_than_serve_a_mixture(
    restartable_nats: NatsNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    """NATS started again without its storage: the node kept its epoch and positions, stayed
    NOT_SERVING for good, and with another node making the stream anew served two epochs for
    one history, its clients skipping what they missed without a word."""
    # Lost for good once it has looked lost this long (10 s, for a cluster's leader election).
    monkeypatch.setattr(feed, "CONFIRM_LOST", 1.0)
    store = f"{restartable_nats.url}?stream=CHAT_{uuid.uuid4().hex}"
    async with asyncio.timeout(60):
        server = ChatServer(chat_config(store))
        await server.start()
        try:
            addr = f"127.0.0.1:{server.port}"
            async with ChatClient(ClientConfig(addr=addr, timeout=5)) as client:
                await client.send("bob", "in the old history", ROOM)
            await asyncio.to_thread(restartable_nats.stop)
            shutil.rmtree(restartable_nats.root / "js")
            await asyncio.to_thread(restartable_nats.start)
            with pytest.raises(HistoryReplaced, match="was NATS's storage lost"):
                await server.wait()
            assert await health(addr) == NOT_SERVING
        finally:
            await server.stop(0)
        # Started again, a node serves the history there is (empty, a new epoch).
        async with (
            ChatServer(chat_config(store)) as again,
            ChatClient(ClientConfig(addr=f"127.0.0.1:{again.port}")) as client,
        ):
            assert await client.history(ROOM) == []


async def test_checking_the_stream_under_load_is_no_false_alarm(
    restartable_nats: NatsNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The periodic check compares the stream's last seq with what the feed has delivered:
    taken after the answer, a message delivered while it was on its way made a busy stream
    look shorter than what was seen, and a healthy node stopped as if NATS had lost it."""
    monkeypatch.setattr(feed, "CONFIRM_LOST", 0.0)  # one wrong doubt would stop it
    monkeypatch.setattr(feed, "STREAM_CHECK", 0.005)
    store = f"{restartable_nats.url}?stream=CHAT_{uuid.uuid4().hex}"
    async with asyncio.timeout(60), ChatServer(chat_config(store)) as server:
        addr = f"127.0.0.1:{server.port}"
        async with ChatClient(ClientConfig(addr=addr, timeout=10)) as client:
            session = client.session("busy", ROOM)
            async with Follower(session):
                for round_ in range(20):
                    await asyncio.gather(*(session.send(f"{round_}.{n}") for n in range(200)))
        assert server.failure is None
        assert await health(addr) == SERVING


async def test_a_node_whose_stream_is_deleted_under_it_stops(
    restartable_nats: NatsNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stream deleted while the node stays connected (an operator's `nats stream rm`):
    nats-py's feed consumer failed to recreate itself without a word, and the node said
    SERVING for good while every send and read failed."""
    monkeypatch.setattr(feed, "CONFIRM_LOST", 1.0)
    monkeypatch.setattr(feed, "STREAM_CHECK", 0.2)
    stream = f"CHAT_{uuid.uuid4().hex}"
    async with asyncio.timeout(60):
        server = ChatServer(chat_config(f"{restartable_nats.url}?stream={stream}"))
        await server.start()
        try:
            addr = f"127.0.0.1:{server.port}"
            async with ChatClient(ClientConfig(addr=addr, timeout=5)) as client:
                await client.send("bob", "in the old history", ROOM)
            nc = await nats.connect(restartable_nats.url)
            try:
                assert await nc.jetstream().delete_stream(stream)
            finally:
                await nc.close()
            with pytest.raises(HistoryReplaced, match="it is gone; was NATS's storage lost"):
                await server.wait()
            assert await health(addr) == NOT_SERVING
        finally:
            await server.stop(0)


# -- the stream leader of a 3-node cluster killed while clients chat ------------------------

PER_PUBLISHER = 60
KILL_AFTER = 30  # acknowledged messages, all publishers together


class Publisher:
    """Numbered messages through the client library (its retries keep one key per message, so
    a retry never doubles), until `count`; what was acknowledged, and what failed."""

    def __init__(self, client: ChatClient, name: str, count: int) -> None:
        self.client = client
        self.name = name
        self.count = count
        self.acked: list[Message] = []
        self.failed: list[str] = []
        self.slowest = 0.0
        self.progress = asyncio.Event()

    async def run(self) -> None:
        for i in range(self.count):
            started = time.monotonic()
            try:
                sent = await self.client.send(self.name, f"{self.name} {i}", ROOM)
            except RemoteError as error:
                self.failed.append(f"{self.name} {i}: {error.status} {error}")
            else:
                self.acked.append(sent.message)
            self.slowest = max(self.slowest, time.monotonic() - started)
            self.progress.set()
            await asyncio.sleep(0.01)


async def probe_sends(addr: str, until: asyncio.Event) -> list[tuple[float, str]]:
    """Unary Sends (no retries, in another room) every 50 ms until `until`: (time, status)."""
    seen: list[tuple[float, str]] = []
    async with grpc.aio.insecure_channel(addr) as channel:
        stub = pb_grpc.ChatServiceStub(channel)
        while not until.is_set():
            started = time.monotonic()
            try:
                await stub.Send(
                    pb.SendRequest(sender="probe", text="p", room="probe", key=uuid.uuid4().hex),
                    timeout=10.0,
                )
                status = "OK"
            except grpc.RpcError as error:
                status = error.code().name
            seen.append((started, f"{status} in {time.monotonic() - started:.2f}s"))
            await asyncio.sleep(0.05)
    return seen


async def test_killing_the_stream_leader_loses_and_doubles_nothing(
    nats_cluster: NatsCluster,
) -> None:
    stream = f"CHAT_{uuid.uuid4().hex}"
    query = f"?stream={stream}&replicas=3"
    async with asyncio.timeout(60):
        # The stream is created first, to learn its leader. A is connected to the leader alone
        # (nats-py learns the other nodes from it, and reconnects to one when it dies); B to
        # the two others, so it only loses the stream's leader, not its connection.
        store = await NatsStore.open(f"nats://{nats_cluster.servers}{query}", Retention())
        await store.aclose()
        leader = await nats_cluster.stream_leader(stream)
        others = ",".join(
            node.url.removeprefix("nats://")
            for i, node in enumerate(nats_cluster.nodes)
            if i != leader
        )
        a = ChatServer(chat_config(f"{nats_cluster.nodes[leader].url}{query}"))
        b = ChatServer(chat_config(f"nats://{others}{query}"))
        await b.start()
        try:
            await a.start()
            await _chat_through_a_leader_kill(nats_cluster, stream, leader, a, b)
        finally:
            await a.stop(0)
            await b.stop(0)


async def _chat_through_a_leader_kill(
    cluster: NatsCluster, stream: str, leader: int, a: ChatServer, b: ChatServer
) -> None:
    addr_a, addr_b = f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"
    ab, ba = f"{addr_a},{addr_b}", f"{addr_b},{addr_a}"
    async with (
        ChatClient(ClientConfig(addr=ab, timeout=15)) as reader_a,
        ChatClient(ClientConfig(addr=ba, timeout=15)) as reader_b,
        ChatClient(ClientConfig(addr=ab, timeout=15)) as client_a,
        ChatClient(ClientConfig(addr=ba, timeout=15)) as client_b,
        Collector(reader_a.session("fan-a", ROOM, history=0)) as on_a,
        Collector(reader_b.session("fan-b", ROOM, history=0)) as on_b,
    ):
        publishers = [
            Publisher(client_a, "ann", PER_PUBLISHER),
            Publisher(client_b, "bob", PER_PUBLISHER),
        ]
        tasks = [asyncio.create_task(p.run()) for p in publishers]
        async with asyncio.timeout(20):
            while sum(len(p.acked) for p in publishers) < KILL_AFTER:
                for p in publishers:
                    p.progress.clear()
                await asyncio.wait(
                    [asyncio.ensure_future(p.progress.wait()) for p in publishers],
                    return_when=asyncio.FIRST_COMPLETED,
                )
        probing = asyncio.Event()
        probe = asyncio.create_task(probe_sends(addr_b, probing))
        killed = time.monotonic()
        await asyncio.to_thread(cluster.kill, leader)
        # A lost its connection; nats-py reconnects it to another node within the grace, so A
        # may stay SERVING (only its feed restarts). Either way a send is answered, accepted
        # or refused as UNAVAILABLE while the stream elects a leader: never hung, never INTERNAL.
        during = await raw_send(addr_a, "during")
        assert during in (grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE)
        new_leader = await cluster.stream_leader(stream, timeout=20)
        elected = time.monotonic() - killed
        await until_health(addr_a, SERVING, timeout=20)
        a_back = time.monotonic() - killed
        await asyncio.wait_for(asyncio.gather(*tasks), 40)
        probing.set()
        probes = await probe
        first_ok = next((t - killed for t, s in probes if s.startswith("OK")), None)
        refusals = [s for t, s in probes if not s.startswith("OK")]
        print(
            f"\nleader node{leader} killed: a send on A {during.name}; "
            f"node{new_leader} leads after {elected:.2f}s; "
            f"node A SERVING again {a_back:.2f}s after the kill; "
            f"probe sends on B: {len(refusals)} refused {sorted(set(refusals))[:6]}, first OK "
            f"{first_ok if first_ok is None else round(first_ok, 2)}s after; slowest "
            f"publisher send {max(p.slowest for p in publishers):.2f}s; failed sends: "
            f"{[f for p in publishers for f in p.failed]}; fan-a reconnects "
            f"{on_a.count(Reconnecting)}, fan-b {on_b.count(Reconnecting)}"
        )

        acked = [m for p in publishers for m in p.acked]
        history = await client_b.history(ROOM, limit=1000)
        assert history == await ChatClient(ClientConfig(addr=addr_a, timeout=10)).history(
            ROOM, limit=1000
        )
        # One order, contiguous; every acknowledged message in it exactly once; nothing twice.
        assert [m.seq for m in history] == list(range(1, len(history) + 1))
        texts = [m.text for m in history]
        assert len(set(texts)) == len(texts), "a message was stored twice"
        assert {m.id for m in acked} <= {m.id for m in history}
        assert len(acked) + sum(len(p.failed) for p in publishers) == 2 * PER_PUBLISHER
        # Each publisher's messages in the order it sent them.
        for p in publishers:
            mine = [m.text for m in history if m.sender == p.name]
            assert mine == sorted(mine, key=lambda text: int(text.split()[1]))
        # Every follower got every message exactly once, in that order (resuming if it must).
        for follower in (on_a, on_b):
            await until_count(follower, len(history))
            assert [m.id for m in follower.messages()] == [m.id for m in history]

        # A's feed follows again after its reconnect: a member on A gets a message sent on B.
        # (While the new leader settles, A's feed may fail once more and A refuse the join:
        # then it is SERVING again soon, and the join is tried again.)
        async with asyncio.timeout(30):
            while True:
                await until_health(addr_a, SERVING, timeout=20)
                in_room = asyncio.Event()
                joiner = asyncio.create_task(raw_join(addr_a, count=1, in_room=in_room))
                entered = asyncio.ensure_future(in_room.wait())
                await asyncio.wait([joiner, entered], return_when=asyncio.FIRST_COMPLETED)
                if in_room.is_set():
                    break
                entered.cancel()
                refused = await joiner
                assert refused.refused or refused.status, "a join ended without a reason"
        latest = (await client_b.send("bob", "after the kill", ROOM)).message
        joined = await asyncio.wait_for(joiner, 10)
        assert [m.id for m in joined.messages] == [latest.id]


async def until_count(follower: Collector, count: int) -> None:
    await follower.until(lambda: len(follower.messages()) >= count, 20)


# -- the store itself across an outage -----------------------------------------------------


async def test_the_store_fails_fast_while_disconnected_and_follows_on_from_its_position(
    restartable_nats: NatsNode,
) -> None:
    url = f"{restartable_nats.url}?stream=CHAT_{uuid.uuid4().hex}"
    mine, other = await NatsStore.open(url, Retention()), await NatsStore.open(url, Retention())

    async def append(store: NatsStore, text: str) -> Message:
        appended = await store.append(
            id=uuid.uuid4().hex, room=ROOM, sender="ann", text=text, sent_at=datetime.now(UTC)
        )
        return appended.message

    try:
        async with asyncio.timeout(30):
            delivered: list[Message] = []
            arrived = asyncio.Event()

            def deliver(message: Message) -> None:
                delivered.append(message)
                arrived.set()

            subscribed = asyncio.Event()

            async def following() -> None:
                subscribed.set()

            feed = asyncio.create_task(mine.follow(deliver, following))
            await subscribed.wait()
            first = await append(other, "1")
            while not delivered:
                arrived.clear()
                await arrived.wait()

            await asyncio.to_thread(restartable_nats.stop)
            # The feed ends at once; appends fail at once (no waiting for a timeout).
            with pytest.raises(StoreError, match="lost the connection"):
                await asyncio.wait_for(feed, 2)
            started = time.monotonic()
            with pytest.raises(StoreError, match="no connection to NATS"):
                await append(mine, "during")
            assert time.monotonic() - started < 0.5
            assert not mine.connected

            await asyncio.to_thread(restartable_nats.start)
            # Appended by another process before this one follows again: not missed.
            async with asyncio.timeout(15):
                while True:
                    try:
                        second = await append(other, "2")
                        break
                    except StoreError:
                        await asyncio.sleep(0.1)
            subscribed.clear()
            feed = asyncio.create_task(mine.follow(deliver, following))
            await subscribed.wait()
            while len(delivered) < 2:
                arrived.clear()
                await arrived.wait()
            third = await append(mine, "3")
            while len(delivered) < 3:
                arrived.clear()
                await arrived.wait()
            assert [m.id for m in delivered] == [first.id, second.id, third.id]
            assert [m.seq for m in delivered] == [1, 2, 3]
            feed.cancel()
            await asyncio.gather(feed, return_exceptions=True)
    finally:
        await mine.aclose()
        await other.aclose()


async def test_replicas_are_the_history_s_and_its_read_markers_and_kept_unless_named(
    nats_cluster: NatsCluster, caplog: pytest.LogCaptureFixture
) -> None:
    """A history made with one replica, opened again with three: its read-marker stream gets
    three as well (it stayed on one node, and every named join failed while that one was
    down). Opened once more without `replicas=`, both keep three (a server started without
    it used to take the cluster's copies away). A change is logged: one node's flag sets the
    copies every node keeps, and it went without a word."""
    import nats

    stream = f"CHAT_{uuid.uuid4().hex}"
    url = f"nats://{nats_cluster.servers}?stream={stream}"
    async with asyncio.timeout(60):
        for replicas in ("&replicas=1", "&replicas=3", ""):
            store = await NatsStore.open(f"{url}{replicas}", Retention())
            await store.aclose()
        changes = [
            r for r in caplog.records if getattr(r, "event", "") == "stream_replicas_changed"
        ]
        assert [r.getMessage().split(";")[0] for r in changes] == [
            f"the NATS stream {stream} had 1 replicas"
        ]
        connection = await nats.connect(nats_cluster.nodes[0].url)
        try:
            js = connection.jetstream()
            for name in (stream, f"{stream}_READ"):
                assert (await js.stream_info(name)).config.num_replicas == 3, name
        finally:
            await connection.close()


async def test_a_repeated_key_is_found_across_rooms_on_a_replicated_stream(
    nats_cluster: NatsCluster,
) -> None:
    """The stream-wide key lookup (a publish expecting a last key no message has) relies on a
    replicated stream checking keys first too, as a single server does."""
    url = f"nats://{nats_cluster.servers}?stream=CHAT_{uuid.uuid4().hex}&replicas=3"
    async with asyncio.timeout(60):
        store = await NatsStore.open(url, Retention())
        try:
            now = datetime.now(UTC)
            target = await store.append(id="t" * 32, room="a", sender="ann", text="hi", sent_at=now)
            reply = await store.append(
                id="r" * 32, room="a", sender="bob", text="re", sent_at=now, key="k",
                reply_to=target.message.id,
            )  # fmt: skip
            again = await store.append(
                id="x" * 32, room="b", sender="bob", text="re", sent_at=now, key="k",
                reply_to=target.message.id,
            )  # fmt: skip
            assert again.duplicate
            assert again.message.id == reply.message.id
            assert await store.last_seq("b") == 0
        finally:
            await store.aclose()
