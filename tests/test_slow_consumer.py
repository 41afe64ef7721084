"""A subscriber that stops reading is cut off; nobody else notices."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from grpcchat.client import ChatClient
from grpcchat.client.config import ClientConfig
from grpcchat.core.limits import Limits
from grpcchat.gen.chat.v1 import chat_service_pb2 as pb
from grpcchat.gen.chat.v1 import chat_service_pb2_grpc as pb_grpc
from grpcchat.server import ChatServer
from grpcchat.server.config import ServerConfig
from tests.helpers import Follower

QUEUE_SIZE = 32


@pytest.fixture
def server_config() -> ServerConfig:
    return ServerConfig(
        port=0,
        store="memory://",
        limits=Limits(queue_size=QUEUE_SIZE, rate=0, request_rate=0),
        grace_period=1.0,
    )


async def test_slow_consumer_is_disconnected_and_others_get_everything(
    server: ChatServer, addr: str, client: ChatClient
) -> None:
    text = "x" * 4000
    async with (
        grpc.aio.insecure_channel(addr) as stalled_channel,
        Follower(client.session("fast")) as fast,
    ):
        stalled = pb_grpc.ChatServiceStub(stalled_channel).Subscribe(
            pb.SubscribeRequest(name="stalled")
        )
        await asyncio.wait_for(stalled.initial_metadata(), 5)
        assert server.hub.session_count() == 2

        # Post until the stalled subscriber is evicted: first the transport's flow-control
        # window fills, then its queue. Bounded, so a broken eviction fails instead of hanging.
        sent = []
        for i in range(5000):
            sent.append((await client.send("bob", f"{i} {text}")).message)
            if server.hub.session_count() == 1:
                break
        else:
            pytest.fail("the stalled subscriber was never disconnected")

        received = await fast.messages(len(sent), timeout=30)
        assert [m.seq for m in received] == [m.seq for m in sent]

        # The stalled client, once it reads, finds what had been sent before the cut-off and then
        # the reason, so it knows to reconnect and resume.
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await asyncio.wait_for(_read_to_end(stalled), 30)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "slow consumer" in (caught.value.details() or "")

        # The room keeps working for everyone else.
        after = (await client.send("bob", "after the cut-off")).message
        [message] = await fast.messages(1)
        assert message.id == after.id


async def _read_to_end(call: grpc.aio.UnaryStreamCall[object, object]) -> None:
    async for _ in call:
        pass


async def test_a_slow_consumer_that_never_reads_again_holds_its_peers_place() -> None:
    """Its call stays open while it does not read (its status waits behind what it has not
    read): until the call is over, it still counts against its address's sessions, so a
    client cannot pile up such calls past --max-sessions-per-peer."""
    limits = Limits(queue_size=QUEUE_SIZE, rate=0, request_rate=0, max_sessions_per_peer=1)
    config = ServerConfig(port=0, store="memory://", limits=limits, grace_period=1.0)
    async with ChatServer(config) as server:
        addr = f"127.0.0.1:{server.port}"
        text = "x" * 4000
        async with (
            ChatClient(ClientConfig(addr=addr)) as client,  # unary sends: no session
            grpc.aio.insecure_channel(addr) as stalled_channel,
        ):
            stub = pb_grpc.ChatServiceStub(stalled_channel)
            stalled = stub.Subscribe(pb.SubscribeRequest(name="stalled"))
            await asyncio.wait_for(stalled.initial_metadata(), 5)
            for i in range(5000):
                await client.send("bob", f"{i} {text}")
                if server.hub.session_count() == 0:
                    break
            else:
                pytest.fail("the stalled subscriber was never disconnected")
            another = stub.Subscribe(pb.SubscribeRequest(name="another"))
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await asyncio.wait_for(another.read(), 5)
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "already has 1 sessions open" in (refused.value.details() or "")
            stalled.cancel()  # the call is over: its place is free (once the server sees it)
            async with asyncio.timeout(5):
                while True:
                    again = stub.Subscribe(pb.SubscribeRequest(name="again"))
                    try:
                        await again.read()  # its RoomJoined...
                        break
                    except grpc.aio.AioRpcError as error:  # ...or still refused: try again
                        if error.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                            raise
                        await asyncio.sleep(0.05)
            again.cancel()
