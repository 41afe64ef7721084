"""Live room messages across nodes: two servers on one NATS stream deliver every message,
wherever it was sent, to the room's members on both, once each, in the order History returns;
and the per-room gate that makes it so (in order, repeated, early with a gap read from history).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

import grpc
import pytest

from grpcchat.core.feed import Gate
from grpcchat.core.history import Retention
from grpcchat.core.hub import Hub
from grpcchat.core.limits import Limits
from grpcchat.core.models import Envelope, Message, RoomJoined
from grpcchat.gen.chat.v1 import chat_service_pb2 as pb
from grpcchat.gen.chat.v1 import chat_service_pb2_grpc as pb_grpc
from grpcchat.server import ChatServer
from grpcchat.server.config import ServerConfig
from grpcchat.store.memory import MemoryStore
from grpcchat.wire import codec
from tests.helpers import RoomReader

TIMEOUT = 20.0
ROOM = "lobby"


def message(seq: int) -> Message:
    return Message(f"m{seq}", ROOM, "ann", f"#{seq}", datetime.now(UTC), seq, "e")


def seqs(envelopes: list[Envelope]) -> list[int]:
    return [e.event.seq for e in envelopes if isinstance(e.event, Message)]


def test_the_gate_delivers_in_order_once_and_holds_what_comes_early() -> None:
    gate = Gate()
    assert gate.offer(Envelope(message(3))) == []  # held until live delivery starts
    assert seqs(gate.start(3)) == [3]
    assert seqs(gate.offer(Envelope(message(4)))) == [4]
    assert gate.offer(Envelope(message(4))) == []  # a repeat
    assert gate.offer(Envelope(message(2))) == []  # before the start
    assert gate.offer(Envelope(message(7))) == []
    assert gate.gap == (5, 7)
    assert gate.offer(Envelope(message(6))) == []
    assert gate.gap == (5, 6)
    assert seqs(gate.offer(Envelope(message(5)))) == [5, 6, 7]
    assert gate.gap is None
    assert gate.offer(Envelope(message(9))) == []
    assert seqs(gate.skip_to(9)) == [9]  # seq 8 is gone from history


class FeedStore(MemoryStore):
    """A memory store that says it has a feed (the test calls `hub.receive` itself)."""

    async def follow(self, deliver: Callable[[Message], None]) -> None:
        await asyncio.Event().wait()


async def append_elsewhere(store: MemoryStore, text: str) -> Message:
    """What another process appending to the shared history looks like here."""
    appended = await store.append(
        id=uuid.uuid4().hex, room=ROOM, sender="zed", text=text, sent_at=datetime.now(UTC)
    )
    return appended.message


async def test_the_hub_gates_feed_and_own_messages_and_reads_gaps_from_history() -> None:
    store = FeedStore(Retention())
    hub = Hub(store, Limits(rate=0, request_rate=0))
    try:
        async with hub.connect("ann") as ann:
            reader = RoomReader(ann, ROOM)
            try:
                await hub.join(ann, ROOM)
                await asyncio.wait_for(reader.joined.wait(), TIMEOUT)
                first = await append_elsewhere(store, "1")
                hub.receive(first)  # in order
                hub.receive(first)  # again: dropped
                own = await hub.post("ann", "2", room=ROOM)  # delivered at once
                hub.receive(own.message)  # our own, back from the feed: dropped
                skipped = [await append_elsewhere(store, str(n)) for n in (3, 4)]
                fifth = await append_elsewhere(store, "5")
                hub.receive(fifth)  # early: 3 and 4 are read from history
                await reader.until(5)
                hub.receive(skipped[0])  # late: dropped
                await hub.post("ann", "6", room=ROOM)
                await reader.until(6)
                history = await hub.history(ROOM, limit=100)
                assert [m.seq for m in history] == [1, 2, 3, 4, 5, 6]
                assert reader.messages == history
            finally:
                await reader.stop()
    finally:
        hub.drain()
        await store.aclose()


# -- two servers on one NATS stream -------------------------------------------------------


@pytest.fixture
async def two_nodes(nats_url: str) -> AsyncIterator[tuple[ChatServer, ChatServer]]:
    url = f"{nats_url}?stream=CHAT_{uuid.uuid4().hex}"
    config = ServerConfig(
        port=0, store=url, limits=Limits(rate=0, request_rate=0), grace_period=1.0
    )
    async with ChatServer(config) as a, ChatServer(config) as b:
        yield a, b


async def subscribe(port: int, joined: asyncio.Event, count: int) -> list[Message]:
    """A raw Subscribe stream on the lobby (no client-side dedup): its first `count` messages,
    after the RoomJoined (which sets `joined`)."""
    messages: list[Message] = []
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = pb_grpc.ChatServiceStub(channel).Subscribe(pb.SubscribeRequest(name=""))
        async for response in call:
            for item in response.events:
                event = codec.event_from_proto(item)
                if isinstance(event, RoomJoined):
                    joined.set()
                elif isinstance(event, Message):
                    messages.append(event)
                    if len(messages) == count:
                        call.cancel()
                        return messages
    raise AssertionError(f"the stream ended early: {messages}")


N, M = 60, 40


async def test_messages_reach_members_on_every_node_once_in_history_order(
    two_nodes: tuple[ChatServer, ChatServer],
) -> None:
    a, b = two_nodes
    joined = [asyncio.Event(), asyncio.Event()]
    async with asyncio.timeout(TIMEOUT):
        readers = [
            asyncio.create_task(subscribe(server.port, event, N + M))
            for server, event in zip((a, b), joined, strict=True)
        ]
        await asyncio.gather(*(event.wait() for event in joined))

        async def send(server: ChatServer, sender: str, count: int) -> None:
            for i in range(count):
                await server.hub.post(sender, f"{sender} {i}", room=ROOM)

        await asyncio.gather(send(a, "ann", N), send(b, "bob", M))
        received = await asyncio.gather(*readers)
    history = await b.hub.history(ROOM, limit=N + M + 10)
    assert [m.seq for m in history] == list(range(1, N + M + 1))
    assert history == await a.hub.history(ROOM, limit=N + M + 10)
    for messages in received:
        assert [(m.seq, m.id) for m in messages] == [(m.seq, m.id) for m in history]
    # Each sender's messages in the order it sent them.
    for sender, count in (("ann", N), ("bob", M)):
        assert [m.text for m in history if m.sender == sender] == [
            f"{sender} {i}" for i in range(count)
        ]
