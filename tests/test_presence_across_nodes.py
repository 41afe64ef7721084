"""Presence, member lists, direct messages and rate limits across nodes: servers on one NATS
stream act as one chat (real nats-server, real servers, real clients); and the `Roster` that
keeps what the other nodes announced."""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from grpcchat.client.client import ChatClient
from grpcchat.client.config import ClientConfig
from grpcchat.client.session import ChatSession
from grpcchat.core.cluster import CONNECTED, MemberChange, Roster
from grpcchat.core.errors import LimitExceeded, NotFound
from grpcchat.core.hub import Hub
from grpcchat.core.limits import Limits
from grpcchat.core.models import Message, PresenceChange, RoomJoined
from grpcchat.core.session import Session
from grpcchat.server import ChatServer
from grpcchat.server.config import ServerConfig
from grpcchat.store.nats.cluster import TTL
from tests.conftest import ServerProcess
from tests.v1_peer import V1Client

TIMEOUT = 20.0
ROOM = "lobby"


def by_name(change: MemberChange) -> str:
    return change.name


def test_the_roster_counts_a_name_once_across_nodes_and_drops_a_node_as_a_whole() -> None:
    roster = Roster()
    ann_in = MemberChange(ROOM, "ann", True)
    assert roster.apply("n1", [ann_in, MemberChange(CONNECTED, "ann", True)]) == [
        ann_in,
        MemberChange(CONNECTED, "ann", True),
    ]
    assert roster.apply("n2", [ann_in]) == []  # in the room already, as far as anyone sees
    assert roster.apply("n1", [ann_in]) == []  # repeated
    assert roster.count(ROOM) == 1
    assert roster.has(CONNECTED, "ann")
    assert roster.apply("n1", [MemberChange(ROOM, "ann", False)]) == []  # n2 still has her
    assert sorted(roster.replace("n2", {ROOM: ["bob", "cy"]}), key=by_name) == [
        MemberChange(ROOM, "ann", False),
        MemberChange(ROOM, "bob", True),
        MemberChange(ROOM, "cy", True),
    ]
    assert roster.page(ROOM, "", 10) == ["bob", "cy"]
    assert roster.page(ROOM, "bob", 10) == ["cy"]
    assert roster.rooms() == [ROOM]
    assert sorted(roster.drop("n2"), key=by_name) == [
        MemberChange(ROOM, "bob", False),
        MemberChange(ROOM, "cy", False),
    ]
    assert roster.count(ROOM) == 0
    assert "n2" not in roster
    assert roster.drop("n1") == [MemberChange(CONNECTED, "ann", False)]
    assert roster.nodes == []


class Events:
    """What one session receives, with a bounded wait for a condition on it."""

    def __init__(self, session: Session) -> None:
        self.items: list[object] = []
        self._changed = asyncio.Event()
        self._task = asyncio.create_task(self._run(session))

    async def _run(self, session: Session) -> None:
        async for batch in session.batches():
            self.items.extend(envelope.event for envelope in batch)
            self._changed.set()

    async def until(self, condition: Callable[[list[object]], bool]) -> None:
        async with asyncio.timeout(TIMEOUT):
            while not condition(self.items):
                self._changed.clear()
                await self._changed.wait()

    def presence(self) -> list[tuple[str, bool]]:
        return [(e.name, e.joined) for e in self.items if isinstance(e, PresenceChange)]

    def messages(self) -> list[Message]:
        return [e for e in self.items if isinstance(e, Message)]

    async def stop(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


async def until(condition: Callable[[], Any]) -> None:
    """Poll a condition of the servers' state (every 20 ms, bounded)."""
    async with asyncio.timeout(TIMEOUT):
        while not await condition():  # noqa: ASYNC110 (the state is another server's)
            await asyncio.sleep(0.02)


@pytest.fixture
def nats_store(nats_url: str) -> str:
    return f"{nats_url}?stream=CHAT_{uuid.uuid4().hex}"


@pytest.fixture
async def three_nodes(nats_store: str) -> AsyncIterator[tuple[ChatServer, ...]]:
    config = ServerConfig(
        port=0,
        store=nats_store,
        limits=Limits(rate=0.2, burst=3, request_rate=0),
        grace_period=0.5,
    )
    async with ChatServer(config) as a, ChatServer(config) as b, ChatServer(config) as c:
        yield a, b, c


async def member_names(server: ChatServer, room: str = ROOM) -> list[str]:
    async with ChatClient(ClientConfig(addr=server.address)) as client:
        return await client.members(room)


async def joined(hub: Hub, session: Session) -> Events:
    events = Events(session)
    await hub.join(session, ROOM)
    await events.until(lambda items: any(isinstance(e, RoomJoined) for e in items))
    return events


async def test_presence_members_and_counts_span_nodes(three_nodes: tuple[ChatServer, ...]) -> None:
    a, b, c = three_nodes
    async with a.hub.connect("ann") as ann, b.hub.connect("bob") as bob:
        ann_events = await joined(a.hub, ann)
        try:
            await until(lambda: _equals(member_names(c), ["ann"]))
            bob_events = await joined(b.hub, bob)
            first = next(e for e in bob_events.items if isinstance(e, RoomJoined))
            assert first.members == ("ann", "bob")
            assert first.member_count == 2
            await ann_events.until(lambda _: ("bob", True) in ann_events.presence())
            for server in (a, b, c):
                await until(lambda s=server: _equals(member_names(s), ["ann", "bob"]))
            async with ChatClient(ClientConfig(addr=c.address)) as client:
                rooms = {room.name: room.members for room in await client.rooms()}
            assert rooms[ROOM] == 2  # on c, where nobody is
            # A second session of ann's on another node is no change for anyone.
            async with c.hub.connect("ann") as ann_again:
                again = await joined(c.hub, ann_again)
                await again.stop()
            # A marker after it: whatever ann's second session caused has reached bob by then.
            async with c.hub.connect("cy") as cy:
                cy_events = await joined(c.hub, cy)
                await bob_events.until(lambda _: ("cy", True) in bob_events.presence())
                await cy_events.stop()
            assert [change for change in bob_events.presence() if change[0] == "ann"] == []
            assert ann_events.presence()[0] == ("bob", True)
            await b.hub.leave(bob, ROOM)
            await ann_events.until(lambda _: ("bob", False) in ann_events.presence())
            await until(lambda: _equals(member_names(c), ["ann"]))
            await bob_events.stop()
        finally:
            await ann_events.stop()


async def test_direct_messages_reach_the_recipient_on_any_node_once(
    three_nodes: tuple[ChatServer, ...],
) -> None:
    a, b, c = three_nodes
    async with (
        a.hub.connect("ann") as ann,
        b.hub.connect("bob") as bob,
        b.hub.connect("cy") as cy_elsewhere,
    ):
        ann_events, bob_events, cy_events = Events(ann), Events(bob), Events(cy_elsewhere)
        try:
            await until(lambda: _known(c.hub, "ann", "bob"))
            sent = await c.hub.post("cy", "psst", recipient="ann", key="k1")
            await ann_events.until(lambda _: len(ann_events.messages()) == 1)
            assert ann_events.messages()[0].id == sent.message.id
            # The sender's session on another node gets it too (and so b has seen its key).
            await cy_events.until(lambda _: len(cy_events.messages()) == 1)
            # The same key again, on another node (a client that failed over): the original.
            again = await b.hub.post("cy", "psst", recipient="ann", key="k1")
            assert again.duplicate
            assert again.message.id == sent.message.id
            reply = await a.hub.post("ann", "hi bob", recipient="bob")
            await bob_events.until(lambda _: len(bob_events.messages()) == 1)
            assert bob_events.messages()[0].id == reply.message.id
            await ann_events.until(lambda _: len(ann_events.messages()) == 2)  # her own too
            assert [m.text for m in ann_events.messages()] == ["psst", "hi bob"]
            with pytest.raises(NotFound):
                await c.hub.post("cy", "anyone?", recipient="nobody")
        finally:
            await ann_events.stop()
            await bob_events.stop()
            await cy_events.stop()


async def test_a_direct_message_posted_on_two_nodes_at_once_reaches_each_session_once(
    three_nodes: tuple[ChatServer, ...],
) -> None:
    """The same key on two nodes before either has heard of the other's post: both post (no
    node can know), but each session gets one of the two, never both."""
    a, b, _ = three_nodes
    async with a.hub.connect("ann") as ann, b.hub.connect("cy") as cy:
        ann_events, cy_events = Events(ann), Events(cy)
        try:
            await until(lambda: _known(a.hub, "cy"))
            await until(lambda: _known(b.hub, "ann"))
            await asyncio.gather(
                a.hub.post("cy", "once", recipient="ann", key="k2"),
                b.hub.post("cy", "once", recipient="ann", key="k2"),
            )
            # Forwarded by b after its copy of "once": when a delivers it, it has had that too.
            await b.hub.post("cy", "marker", recipient="ann")
            await ann_events.until(lambda _: "marker" in [m.text for m in ann_events.messages()])
            await cy_events.until(lambda _: "marker" in [m.text for m in cy_events.messages()])
            assert [m.text for m in ann_events.messages()] == ["once", "marker"]
            # cy's session on b sent "marker" there after a's forwarded copy could arrive:
            # wait for that copy's turn with a second marker, forwarded by a.
            await a.hub.post("ann", "marker 2", recipient="cy")
            await cy_events.until(lambda _: "marker 2" in [m.text for m in cy_events.messages()])
            assert [m.text for m in cy_events.messages()] == ["once", "marker", "marker 2"]
        finally:
            await ann_events.stop()
            await cy_events.stop()


async def test_a_rate_is_per_user_across_nodes(three_nodes: tuple[ChatServer, ...]) -> None:
    a, b, _ = three_nodes
    async with a.hub.connect("ed") as on_a, b.hub.connect("eve") as on_b:
        seen_on_a, seen_on_b = await joined(a.hub, on_a), await joined(b.hub, on_b)
        try:
            await b.hub.post("ann", "from b", room=ROOM, principal="ann")  # 2 of 3 left on b
            # Seen on a before ann is active there: counted all the same (a fresh user's
            # first sends on each node each had a whole burst).
            await seen_on_a.until(lambda _: len(seen_on_a.messages()) == 1)
            for i in range(2):  # the rest of ann's burst, spent on a
                await a.hub.post("ann", f"from a {i}", room=ROOM, principal="ann")
            with pytest.raises(LimitExceeded):
                await a.hub.post("ann", "a third on a", room=ROOM, principal="ann")
            await seen_on_b.until(lambda _: len(seen_on_b.messages()) == 3)
            with pytest.raises(LimitExceeded):  # b counted a's two
                await b.hub.post("ann", "once more", room=ROOM, principal="ann")
        finally:
            await seen_on_a.stop()
            await seen_on_b.stop()


async def test_a_stopped_node_says_goodbye_and_a_killed_one_is_forgotten(
    nats_store: str,
) -> None:
    config = ServerConfig(port=0, store=nats_store, grace_period=0.5)
    killed = ServerProcess("--store", nats_store)
    try:
        async with ChatServer(config) as watching:
            async with ChatClient(ClientConfig(addr=killed.addr)) as kim:
                reading = asyncio.create_task(_read_all(kim.session("kim", ROOM)))
                try:
                    await until(lambda: _equals(member_names(watching), ["kim"]))
                    os.kill(killed.process.pid, signal.SIGKILL)
                    killed.process.wait(timeout=5)
                    started = asyncio.get_running_loop().time()
                    await until(lambda: _equals(member_names(watching), []))
                    gone_after = asyncio.get_running_loop().time() - started
                finally:
                    reading.cancel()
                    await asyncio.gather(reading, return_exceptions=True)
            print(f"\nthe killed node's members left after {gone_after:.1f}s")
            assert gone_after <= TTL + 3.0, gone_after
            async with ChatServer(config) as leaving, leaving.hub.connect("lou") as lou:
                events = Events(lou)
                await leaving.hub.join(lou, ROOM)
                await until(lambda: _equals(member_names(watching), ["lou"]))
                await events.stop()
            # A clean stop is told at once, not after the time-to-live.
            async with asyncio.timeout(TTL / 2):
                await until(lambda: _equals(member_names(watching), []))
    finally:
        killed.stop()


async def _read_all(session: ChatSession) -> None:
    async for _ in session.events():
        pass


async def _equals(names: Any, expected: list[str]) -> bool:
    return bool(await names == expected)


async def _known(hub: Hub, *names: str) -> bool:
    return all(hub.roster.has(CONNECTED, name) for name in names)


async def test_article_clients_on_different_nodes_chat(three_nodes: tuple[ChatServer, ...]) -> None:
    """The article's Chat stream (emulated by `tests.v1_peer`) works against any node."""
    a, b, _ = three_nodes
    async with V1Client(a.address) as grace, V1Client(b.address) as adrian:
        await grace.join("grace")
        await adrian.join("adrian")
        await grace.send("grace", "from node a")
        assert ("grace", "from node a") in [
            (m.sender, m.text) for m in await adrian.recv_until("grace", "from node a")
        ]
        await adrian.send("adrian", "from node b")
        assert ("adrian", "from node b") in [
            (m.sender, m.text) for m in await grace.recv_until("adrian", "from node b")
        ]
