"""The streaming publish path: messages sent on a session's own `Connect` stream, many in
flight, each answered by a SendAck matched by its key; refusals, rate limits, and retries over a
reconnect that neither lose nor double a message."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from grpcchat.client import ChatClient, Sent
from grpcchat.client.config import ClientConfig
from grpcchat.client.oneshot import send_lines
from grpcchat.client.packing import packed_requests
from grpcchat.core.errors import InvalidInput, RemoteError
from grpcchat.core.limits import Limits
from grpcchat.gen.chat.v1 import chat_service_pb2 as pb
from grpcchat.gen.chat.v1 import chat_service_pb2_grpc as pb_grpc
from grpcchat.server import ChatServer, inflight
from grpcchat.server.config import ServerConfig
from grpcchat.wire import codec
from tests.helpers import Follower, served


async def test_many_sends_in_flight_are_acked_in_order(client: ChatClient) -> None:
    async with (
        Follower(client.session("bob")) as bob,
        Follower(client.session("alice")) as alice,
    ):
        sent = await asyncio.gather(*(alice.session.send(f"m{i}") for i in range(200)))
        seqs = [s.message.seq for s in sent]
        assert seqs == list(range(seqs[0], seqs[0] + 200))  # written in order, numbered so
        assert [s.message.text for s in sent] == [f"m{i}" for i in range(200)]
        assert all(not s.duplicate and s.message.sender == "alice" for s in sent)
        seen = await bob.messages(200)
        assert [m.id for m in seen] == [s.message.id for s in sent]


async def test_a_direct_message_does_not_overtake_room_messages_written_before_it(
    tmp_path: Path,
) -> None:
    """A direct message skips the history, so it was delivered while the room messages
    written before it were still being stored (in SQLite, on its thread): bob read "see my
    message in #standup" before that message, every time."""
    config = ServerConfig(port=0, store=f"sqlite://{tmp_path / 'h.db'}", limits=Limits(rate=0))
    async with (
        ChatServer(config) as server,
        ChatClient(ClientConfig(addr=f"127.0.0.1:{server.port}", timeout=5)) as client,
        Follower(client.session("bob", ["standup"])) as bob,
        Follower(client.session("alice", [])) as alice,
    ):
        for round_ in range(3):
            await asyncio.gather(
                alice.session.send(f"{round_}: the build is broken", "standup"),
                alice.session.send(f"{round_}: see my message", recipient="bob"),
                alice.session.send(f"{round_}: fixed now", "standup"),
            )
            seen = [(m.recipient, m.text) for m in await bob.messages(3)]
            assert seen == [
                ("", f"{round_}: the build is broken"),
                ("bob", f"{round_}: see my message"),
                ("", f"{round_}: fixed now"),
            ]


async def test_refusals_come_back_as_errors_and_the_session_goes_on(client: ChatClient) -> None:
    async with Follower(client.session("alice")) as alice:
        with pytest.raises(InvalidInput, match="room name"):  # checked before it is written
            await alice.session.send("hi", "No Such Room!")
        with pytest.raises(RemoteError) as nobody:
            await alice.session.send("psst", recipient="nobody")
        assert nobody.value.status == "NOT_FOUND"
        sent = await alice.session.send("still here")
        [echo] = await alice.messages(1)
        assert echo.id == sent.message.id


async def test_a_send_without_a_key_is_refused_on_the_stream(addr: str) -> None:
    async with grpc.aio.insecure_channel(addr) as channel:
        requests: asyncio.Queue[pb.ConnectRequest] = asyncio.Queue()
        requests.put_nowait(pb.ConnectRequest(hello=pb.Hello(name="raw")))
        requests.put_nowait(pb.ConnectRequest(send=pb.SendRequest(text="no key")))

        async def outgoing():  # type: ignore[no-untyped-def]
            while True:
                yield await requests.get()

        call = pb_grpc.ChatServiceStub(channel).Connect(outgoing())
        async with asyncio.timeout(5):
            async for response in call:
                acks = [e.ack for e in response.events if e.WhichOneof("kind") == "ack"]
                if acks:
                    break
        call.cancel()
    assert (acks[0].key, acks[0].code) == ("", "INVALID_ARGUMENT")
    assert "needs a key" in acks[0].reason


@pytest.mark.parametrize(
    ("request_", "reason"),
    [
        (pb.ConnectRequest(), "no action this server knows"),
        (pb.ConnectRequest(hello=pb.Hello(name="again")), "hello may only open a session"),
    ],
    ids=["empty", "second-hello"],
)
async def test_a_request_without_a_use_is_refused_and_the_session_goes_on(
    addr: str, request_: pb.ConnectRequest, reason: str
) -> None:
    async with grpc.aio.insecure_channel(addr) as channel:
        requests: asyncio.Queue[pb.ConnectRequest] = asyncio.Queue()
        requests.put_nowait(pb.ConnectRequest(hello=pb.Hello(name="raw")))
        requests.put_nowait(request_)
        requests.put_nowait(pb.ConnectRequest(join=pb.JoinRoom(room="after")))
        call = pb_grpc.ChatServiceStub(channel).Connect(_forever(requests))
        kinds: list[str] = []
        async with asyncio.timeout(5):
            async for response in call:
                for event in response.events:
                    kinds.append(event.WhichOneof("kind") or "")
                    if event.WhichOneof("kind") == "refused":
                        assert event.refused.code == "INVALID_ARGUMENT"
                        assert reason in event.refused.reason
                if "joined" in kinds:
                    break
        call.cancel()
    assert kinds.index("refused") < kinds.index("joined")  # and the session went on


async def test_rate_limited_sends_wait_and_all_go_through_in_the_order_written() -> None:
    async with (
        # Refusals for a while longer than a held send's own retry (HELD_RETRY).
        served(Limits(rate=15, burst=5, request_rate=0), timeout=10) as (_, client),
        Follower(client.session("alice")) as alice,
    ):
        sent = await asyncio.gather(*(alice.session.send(f"r{i}") for i in range(30)))
        written = [f"r{i}" for i in range(30)]
        assert [s.message.text for s in sent] == written
        # Each exactly once, though most were refused at first, and in the order written:
        # a refused send holds back the ones behind it until it comes again, though the
        # client retries each on a timer of its own.
        stored = await client.history("lobby", limit=100)
        assert [m.text for m in stored] == written
        assert [m.seq for m in stored] == list(range(1, 31))


async def test_sends_in_flight_across_a_restart_are_neither_lost_nor_doubled(
    tmp_path: Path,
) -> None:
    store = f"sqlite://{tmp_path / 'h.db'}"
    limits = Limits(rate=0, request_rate=0)
    first = ChatServer(ServerConfig(port=0, store=store, limits=limits, grace_period=0))
    await first.start()
    port = first.port
    second: ChatServer | None = None
    try:
        async with (
            ChatClient(ClientConfig(addr=f"127.0.0.1:{port}", timeout=20)) as client,
            Follower(client.session("alice")) as alice,
        ):
            sending = [asyncio.create_task(alice.session.send(f"s{i}")) for i in range(40)]
            await asyncio.sleep(0)  # some are written, most still waiting for an answer
            await first.stop(0)
            second = ChatServer(ServerConfig(port=port, store=store, limits=limits))
            await second.start()
            sent = await asyncio.wait_for(asyncio.gather(*sending), 20)
            stored = await client.history("lobby", limit=100)
            texts = [m.text for m in stored]
            assert sorted(texts) == sorted(f"s{i}" for i in range(40))  # once each
            assert len(set(texts)) == len(texts) == 40
            assert {s.message.id for s in sent} == {m.id for m in stored}
    finally:
        if second is not None:
            await second.stop(0)


# -- packed sends: several in one request ------------------------------------------------------


async def test_a_packed_request_is_applied_send_by_send(addr: str, client: ChatClient) -> None:
    sends = [
        pb.SendRequest(text="first", key="k1"),
        pb.SendRequest(text="bad room", room="No Such Room!", key="k2"),
        pb.SendRequest(text="first again", key="k1"),  # the same key: the original comes back
        pb.SendRequest(text="psst", recipient="nobody", key="k4"),
        pb.SendRequest(text="second", key="k5"),
    ]
    async with grpc.aio.insecure_channel(addr) as channel:
        requests: asyncio.Queue[pb.ConnectRequest] = asyncio.Queue()
        call = pb_grpc.ChatServiceStub(channel).Connect(_forever(requests))
        headers = await call.initial_metadata()
        requests.put_nowait(pb.ConnectRequest(hello=pb.Hello(name="raw")))
        requests.put_nowait(pb.ConnectRequest(sends=pb.SendBatch(sends=sends)))
        acks: list[pb.SendAck] = []
        async with asyncio.timeout(5):
            async for response in call:
                acks += [e.ack for e in response.events if e.WhichOneof("kind") == "ack"]
                if len(acks) == len(sends):
                    break
        call.cancel()
    assert codec.reads_packed_sends(headers)
    answers = sorted((a.key, a.code, a.duplicate, a.message.text) for a in acks)
    assert answers == [
        ("k1", "", False, "first"),
        ("k1", "", True, "first"),
        ("k2", "INVALID_ARGUMENT", False, ""),
        ("k4", "NOT_FOUND", False, ""),
        ("k5", "", False, "second"),
    ]
    stored = await client.history("lobby", limit=10)
    assert [m.text for m in stored] == ["first", "second"]  # in the order written
    assert stored[1].seq == stored[0].seq + 1


@pytest.mark.parametrize(
    ("queue_size", "in_the_room"),
    [(1024, False), (1024, True), (200, True)],
    ids=["default", "its-echoes-too", "small-queue"],
)
async def test_a_client_that_packs_faster_than_it_reads_is_held_back_not_cut_off(
    queue_size: int, in_the_room: bool
) -> None:
    """Posting answers a packed request's sends far faster than a linger-spaced writer drains
    their acks: the stream is read no further until they are written (flow control holds the
    client), instead of the acks overflowing the queue and cutting off a client that reads.
    In the room it posts to, each send also queues its echo; the posts in flight are bounded
    by the queue's size (`in_flight_limit`), so neither overflows it."""
    limits = Limits(rate=0, request_rate=0, queue_size=queue_size)
    config = ServerConfig(port=0, store="memory://", limits=limits)
    many = 5_000  # ~54 KiB a request: more acks than the queue holds (1,024), three times
    batch = pb.SendBatch(sends=[pb.SendRequest(text="x", key=str(i)) for i in range(many)])
    async with (
        ChatServer(config) as server,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        requests: asyncio.Queue[pb.ConnectRequest] = asyncio.Queue()
        call = pb_grpc.ChatServiceStub(channel).Connect(_forever(requests))
        requests.put_nowait(pb.ConnectRequest(hello=pb.Hello(name="packer")))
        if in_the_room:
            requests.put_nowait(pb.ConnectRequest(join=pb.JoinRoom(room="lobby")))
        for _ in range(3):
            requests.put_nowait(pb.ConnectRequest(sends=batch))
        acks: list[pb.SendAck] = []
        async with asyncio.timeout(30):
            async for response in call:
                acks += [e.ack for e in response.events if e.WhichOneof("kind") == "ack"]
                if len(acks) == 3 * many:
                    break
        call.cancel()
    assert [a.code for a in acks] == [""] * 3 * many
    assert sum(not a.duplicate for a in acks) == many  # the repeats came back as duplicates


async def _forever(requests: asyncio.Queue[pb.ConnectRequest]) -> AsyncIterator[pb.ConnectRequest]:
    while True:
        yield await requests.get()


def _send(text: str) -> pb.ConnectRequest:
    return pb.ConnectRequest(send=pb.SendRequest(text=text, key=text[:8]))


async def _drain(queue: asyncio.Queue[pb.ConnectRequest | None], may_pack: bool) -> list[str]:
    """What packed_requests writes for the queue's requests, each as a short description."""
    out = []
    async with asyncio.timeout(5):
        async for request in packed_requests(queue, lambda: may_pack):
            action = request.WhichOneof("action")
            if action == "sends":
                out.append("+".join(send.text for send in request.sends.sends))
            else:
                out.append(request.send.text if action == "send" else str(action))
    return out


async def test_sends_waiting_together_are_packed_and_nothing_else_moves() -> None:
    hello = pb.ConnectRequest(hello=pb.Hello(name="a"))
    join = pb.ConnectRequest(join=pb.JoinRoom(room="r"))
    for may_pack, expected in (
        (True, ["hello", "a+b", "join", "c"]),
        (False, ["hello", "a", "b", "join", "c"]),  # a server that does not read `sends`
    ):
        queue: asyncio.Queue[pb.ConnectRequest | None] = asyncio.Queue()
        for request in (hello, _send("a"), _send("b"), join, _send("c"), None):
            queue.put_nowait(request)
        assert await _drain(queue, may_pack) == expected


async def test_a_packed_request_stays_under_the_servers_request_limit() -> None:
    queue: asyncio.Queue[pb.ConnectRequest | None] = asyncio.Queue()
    texts = [letter * 12_000 for letter in "abcde"]
    for text in texts:
        queue.put_nowait(_send(text))
    queue.put_nowait(None)
    written = await _drain(queue, may_pack=True)
    # 36 KB (under the 64 KiB limit), then the rest:
    assert [len(batch.split("+")) for batch in written] == [3, 2]
    assert "+".join(written) == "+".join(texts)


async def test_a_lone_send_goes_out_without_waiting_for_company() -> None:
    queue: asyncio.Queue[pb.ConnectRequest | None] = asyncio.Queue()
    queue.put_nowait(_send("alone"))
    requests = packed_requests(queue, lambda: True)
    async with asyncio.timeout(5):
        first = await anext(requests)
    assert first.send.text == "alone"
    await requests.aclose()


def test_a_hold_lets_the_held_sends_through_one_at_a_time_in_the_order_written() -> None:
    clock = [100.0]
    hold = inflight.Hold(clock=lambda: clock[0])
    assert hold.wait("a") is None  # nothing held
    hold.hold("a", 1.0)  # refused for a second: the sends behind it wait for it
    assert hold.wait("b") == 1.0
    assert hold.wait("c") == 1.0
    clock[0] += 1.0
    assert hold.wait("c") == inflight.HELD_RETRY  # back before "a": still behind it and "b"
    assert hold.wait("a") is None  # its turn
    assert hold.wait("c") == inflight.HELD_RETRY  # back before "b": still behind it
    assert hold.wait("b") is None
    hold.hold("b", 0.5)  # refused again: first in line again
    assert hold.wait("c") == 0.5
    clock[0] += 0.5
    assert hold.wait("b") is None
    assert hold.wait("c") is None
    assert hold.wait("d") is None  # nothing held any more


def test_a_held_send_that_never_comes_back_lapses_and_the_next_one_goes() -> None:
    clock = [100.0]
    hold = inflight.Hold(clock=lambda: clock[0])
    hold.hold("gone", 0.0)
    assert hold.wait("b") == inflight.HELD_RETRY  # never told to retry at once: no spinning
    assert hold.wait("c") == inflight.HELD_RETRY
    clock[0] += inflight.HOLD_GRACE + 0.01  # "gone" never came back
    assert hold.wait("c") == inflight.HELD_RETRY  # "b"'s turn now
    assert hold.key == "b"
    clock[0] += inflight.HOLD_GRACE + 0.01  # nor did "b"
    assert hold.wait("c") is None


def test_a_hold_remembers_a_bounded_number_of_sends() -> None:
    hold = inflight.Hold()
    hold.hold("first", 60.0)
    for n in range(inflight.MAX_HELD + 100):
        assert hold.wait(f"k{n}") is not None
    assert len(hold._keys) == inflight.MAX_HELD


async def test_a_waiting_line_lets_posts_go_in_order_once_one_is_throttled() -> None:
    """The article's stream: post 0 is throttled twice; 1-3 were read meanwhile and wait in
    line; 2 is throttled in its turn and goes back to the head, not behind 3."""
    line = inflight.WaitingLine()
    went: list[int] = []
    throttles = {0: 2, 2: 1}
    wakes = {n: asyncio.Event() for n in range(4)}

    async def post(n: int) -> None:
        holds = await line.wait_turn()
        try:
            while throttles.get(n, 0):
                throttles[n] -= 1
                if not holds:
                    line.hold()
                    holds = True
                await wakes[n].wait()  # its retry timer
                wakes[n].clear()
            went.append(n)
        finally:
            if holds:
                line.done()

    posts = [asyncio.create_task(post(n)) for n in range(4)]
    await asyncio.sleep(0)
    assert went == []  # 0 holds the line, 1-3 wait behind it
    for n in (0, 0, 2):
        wakes[n].set()
        for _ in range(5):
            await asyncio.sleep(0)
    async with asyncio.timeout(5):
        await asyncio.gather(*posts)
    assert went == [0, 1, 2, 3]
    fresh = await line.wait_turn()  # the line is empty again: a new post goes at once
    assert fresh is False


async def test_lines_on_a_session_the_server_refuses_time_out_saying_why() -> None:
    limits = Limits(rate=0, request_rate=0, max_sessions_per_user=1)
    config = ServerConfig(port=0, store="memory://", limits=limits)
    async with (
        ChatServer(config) as server,
        ChatClient(ClientConfig(addr=f"127.0.0.1:{server.port}")) as client,
        Follower(client.session("bot", "lobby")),  # the name's one session
    ):
        config = ClientConfig(addr=f"127.0.0.1:{server.port}", timeout=1.5)
        with pytest.raises(RemoteError) as failed:
            await send_lines(config, "bot", ["a", "b"], lambda _: None)
    assert failed.value.status == "RESOURCE_EXHAUSTED"  # why: so `send` exits 3, retry later
    assert "reconnecting: 'bot' already has 1 sessions open" in str(failed.value)


async def test_lines_sent_while_the_server_is_down_fail_as_unavailable() -> None:
    """As a unary send to a server that is down: exit 3 from `send`, not the deadline's 5."""
    server = ChatServer(ServerConfig(port=0, store="memory://", grace_period=0))
    await server.start()
    accepted: list[str] = []
    first_accepted = asyncio.Event()

    def on_accepted(sent: Sent) -> None:
        accepted.append(sent.message.text)
        first_accepted.set()

    async def lines() -> AsyncIterator[str]:
        yield "before"
        async with asyncio.timeout(5):
            await first_accepted.wait()
        await server.stop(0)
        yield "after"

    config = ClientConfig(addr=f"127.0.0.1:{server.port}", timeout=1.5)
    try:
        with pytest.raises(RemoteError) as failed:
            await send_lines(config, "bot", lines(), on_accepted)
    finally:
        await server.stop(0)
    assert accepted == ["before"]
    assert failed.value.status == "UNAVAILABLE"
    assert "no answer from" in str(failed.value)
    assert "reconnecting:" in str(failed.value)
