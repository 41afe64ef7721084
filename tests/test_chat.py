"""End to end over the real wire: our server on port 0, our client, several sessions."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest

from grpcchat.client import ChatClient, Connected, Reconnecting
from grpcchat.client.config import ClientConfig
from grpcchat.core.errors import InvalidInput, RemoteError
from grpcchat.core.models import RoomJoined
from grpcchat.core.validation import MAX_NAME_LENGTH, MAX_TEXT_LENGTH
from grpcchat.gen.chat.v1 import chat_service_pb2 as pb
from grpcchat.gen.chat.v1 import chat_service_pb2_grpc as pb_grpc
from grpcchat.server import ChatServer
from grpcchat.server.config import ServerConfig
from grpcchat.server.health import NOT_SERVING, SERVING
from tests.helpers import Follower


async def test_two_chatters_see_each_others_messages_in_order(client: ChatClient) -> None:
    async with (
        Follower(client.session("alice")) as alice,
        Follower(client.session("bob")) as bob,
    ):
        sent = []
        for i in range(20):
            speaker = alice if i % 2 else bob
            sent.append((await speaker.session.send(f"message {i}")).message)
        for follower in (alice, bob):
            received = await follower.messages(20)
            assert [m.text for m in received] == [f"message {i}" for i in range(20)]
            assert [m.id for m in received] == [m.id for m in sent]
        assert [m.seq for m in sent] == list(range(1, 21))
        assert len({m.id for m in sent}) == 20


async def test_server_stamps_id_time_and_position(client: ChatClient) -> None:
    before = datetime.now(UTC)
    message = (await client.send("alice", "hello")).message
    after = datetime.now(UTC)
    assert message.id
    assert message.room == "lobby"
    assert message.seq == 1
    assert before - timedelta(seconds=1) <= message.sent_at <= after + timedelta(seconds=1)


async def test_client_supplied_time_is_replaced(addr: str) -> None:
    async with grpc.aio.insecure_channel(addr) as channel:
        stub = pb_grpc.ChatServiceStub(channel)
        call = stub.Chat()  # type: ignore[call-arg]
        old = pb.ChatMessage(sender="mallory", text="from the past")
        old.sent_at.FromDatetime(datetime(2001, 1, 1, tzinfo=UTC))
        await call.write(old)
        echoed = await asyncio.wait_for(call.read(), 5)
        assert isinstance(echoed, pb.ChatMessage)
        assert echoed.sent_at.ToDatetime(tzinfo=UTC).year == datetime.now(UTC).year
        assert echoed.id
        call.cancel()


@pytest.mark.parametrize(
    ("sender", "text", "reason"),
    [
        ("alice", "", "must not be empty"),
        ("alice", "   \n\t ", "must not be empty"),
        ("alice", "x" * (MAX_TEXT_LENGTH + 1), f"limit is {MAX_TEXT_LENGTH}"),
        ("alice", "bell\x07", "control characters"),
        ("", "hi", "name must not be empty"),
        ("a" * (MAX_NAME_LENGTH + 1), "hi", f"limit is {MAX_NAME_LENGTH}"),
        ("ali\x1b[31mce", "hi", "control characters"),
        ("ali\u202ece", "hi", "invisible format characters (U+202E"),
    ],
)
async def test_bad_input_is_invalid_argument(
    addr: str, sender: str, text: str, reason: str
) -> None:
    # A raw stub, so the server's checks are exercised, not the client library's.
    async with grpc.aio.insecure_channel(addr) as channel:
        stub = pb_grpc.ChatServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Send(pb.SendRequest(sender=sender, text=text))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason in (caught.value.details() or "")


@pytest.mark.parametrize("room", ["Lobby", "has space", "-dash", "x" * 33, "émoji"])
async def test_bad_room_is_invalid_argument(addr: str, room: str) -> None:
    async with grpc.aio.insecure_channel(addr) as channel:
        stub = pb_grpc.ChatServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Send(pb.SendRequest(sender="alice", text="hi", room=room))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "room name" in (caught.value.details() or "")


async def test_client_rejects_bad_input_before_sending(client: ChatClient) -> None:
    with pytest.raises(InvalidInput) as caught:
        await client.send("alice", " ")
    assert "must not be empty" in str(caught.value)


async def test_bad_client_does_not_disturb_others(client: ChatClient, addr: str) -> None:
    async with Follower(client.session("bob")) as bob:
        async with grpc.aio.insecure_channel(addr) as channel:
            stub = pb_grpc.ChatServiceStub(channel)
            for garbage in (b"\xff\xff\xff", b"\x0a\x05ab"):
                raw = channel.unary_unary("/chat.v1.ChatService/Send")
                with pytest.raises(grpc.aio.AioRpcError):
                    await raw(garbage)
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.Send(pb.SendRequest(sender="x", text=""))
        await client.send("alice", "still here")
        [message] = await bob.messages(1)
        assert message.text == "still here"


# A string field (2: text) whose bytes are not UTF-8: the request does not parse.
_NOT_UTF8 = b"\x12\x02\xff\xfe"


async def _raw_stream(requests: list[bytes]) -> AsyncIterator[bytes]:
    for request in requests:
        yield request
    await asyncio.sleep(10)  # no half-close: only the server can end the call in time


async def _unparsable_request(channel: grpc.aio.Channel, method: str) -> None:
    """Call `method` with a request that does not parse (after a hello, on Connect)."""
    path = f"/chat.v1.ChatService/{method}"
    match method:
        case "Send":
            await channel.unary_unary(path)(_NOT_UTF8)
        case "Subscribe":
            async for _ in channel.unary_stream(path)(_NOT_UTF8):
                pass
        case "Connect":
            hello = pb.ConnectRequest(hello=pb.Hello(name="ann")).SerializeToString()
            send = b"\x22" + bytes([len(_NOT_UTF8)]) + _NOT_UTF8  # field 4: send
            async for _ in channel.stream_stream(path)(_raw_stream([hello, send])):
                pass
        case "Chat":  # the article's stream
            async for _ in channel.stream_stream(path)(_raw_stream([b"\x0a\x03ann" + _NOT_UTF8])):
                pass


@pytest.mark.parametrize("method", ["Send", "Subscribe", "Connect", "Chat"])
async def test_a_request_that_does_not_parse_is_invalid_argument(
    server: ChatServer, addr: str, method: str
) -> None:
    async with grpc.aio.insecure_channel(addr) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await asyncio.wait_for(_unparsable_request(channel, method), 5)
        assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "not a readable chat.v1." in (failed.value.details() or "")
    assert server.hub.registered_sessions == 0


async def test_rooms_are_isolated(client: ChatClient) -> None:
    async with (
        Follower(client.session("alice", "games")) as games,
        Follower(client.session("bob")) as lobby,
    ):
        await client.send("carol", "in games", "games")
        await client.send("carol", "in lobby")
        [seen_in_games] = await games.messages(1)
        [seen_in_lobby] = await lobby.messages(1)
        assert (seen_in_games.text, seen_in_games.room) == ("in games", "games")
        assert (seen_in_lobby.text, seen_in_lobby.room) == ("in lobby", "lobby")
        # Neither gets the other room's message late: each one's next is its own room's.
        await client.send("carol", "games again", "games")
        await client.send("carol", "lobby again")
        assert [(m.text, m.room) for m in await games.messages(1)] == [("games again", "games")]
        assert [(m.text, m.room) for m in await lobby.messages(1)] == [("lobby again", "lobby")]


async def test_unreachable_server_is_unavailable() -> None:
    async with ChatClient(ClientConfig(addr="127.0.0.1:1", timeout=2)) as client:
        with pytest.raises(RemoteError) as caught:
            await client.send("alice", "hi")
        assert caught.value.status == "UNAVAILABLE"
        assert "cannot reach" in str(caught.value)
        with pytest.raises(RemoteError):
            async for _ in client.session("alice").events():
                pass


async def test_drain_tells_subscribers_to_reconnect_and_they_resume(tmp_path: Path) -> None:
    store = f"sqlite://{tmp_path / 'history.db'}"
    first = ChatServer(ServerConfig(port=0, store=store, grace_period=1.0))
    await first.start()
    port = first.port
    async with (
        ChatClient(ClientConfig(addr=f"127.0.0.1:{port}", timeout=5)) as client,
        Follower(client.session("alice")) as alice,
    ):
        await client.send("bob", "before")
        [before] = await alice.messages(1)
        assert before.text == "before"
        await first.stop()
        event = await alice.next_event()
        assert isinstance(event, Reconnecting)
        assert "shutting down" in event.reason
        second = ChatServer(ServerConfig(port=port, store=store, grace_period=1.0))
        await second.start()
        try:
            # Same history, same epoch: the resume needs no replay and reports no gap.
            while not isinstance(event := await alice.next_event(10), Connected):
                assert isinstance(event, Reconnecting | RoomJoined), event
            await client.send("bob", "after")
            [after] = await alice.messages(1)
            assert after.text == "after"
        finally:
            await second.stop(0)


async def test_a_drain_ends_health_watches_once_they_said_not_serving(tmp_path: Path) -> None:
    """A client watching health (gRPC's client-side health checking keeps a Watch open) was
    never let go: every drain waited out its whole grace."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    server = ChatServer(ServerConfig(port=0, store="memory://", grace_period=30.0))
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            watches = [
                health.Watch(health_pb2.HealthCheckRequest(service=service))
                for service in ("", "chat.v1.ChatService", "not.yet.known")
            ]
            first = [(await asyncio.wait_for(w.read(), 5)).status for w in watches]
            assert first == [SERVING, SERVING, health_pb2.HealthCheckResponse.SERVICE_UNKNOWN]
            stopping = asyncio.create_task(server.stop())
            for watch in watches[:2]:
                assert (await asyncio.wait_for(watch.read(), 5)).status == NOT_SERVING
            for watch in watches:
                with pytest.raises(grpc.aio.AioRpcError) as ended:
                    await asyncio.wait_for(watch.read(), 5)
                assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
                assert ended.value.details() == "server is shutting down"
            await asyncio.wait_for(stopping, 10)  # well within its 30 s grace
            assert not [w for w in watches if not w.done()]
    finally:
        await server.stop(0)


async def test_health_and_reflection_are_served(server: ChatServer, addr: str) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    async with grpc.aio.insecure_channel(addr) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        reply = await health.Check(health_pb2.HealthCheckRequest(service="chat.v1.ChatService"))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        listed = await health.List(health_pb2.HealthListRequest())
        assert {name: s.status for name, s in listed.statuses.items()} == {
            "": SERVING,
            "chat.v1.ChatService": SERVING,
        }
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await health.Check(health_pb2.HealthCheckRequest(service="nope"))
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        call = reflection.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        names = set()
        async for response in call:
            names = {s.name for s in response.list_services_response.service}
            break
        assert "chat.v1.ChatService" in names
    await server.stop(0)
