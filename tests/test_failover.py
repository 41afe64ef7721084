"""Failover: a client given several addresses (`--addr a:1,b:2`) moves on to the next when the
one in use is lost. Two real `grpcchat serve` processes share one JetStream history, so a
position means the same on both and a session resumes on B exactly where it was on A."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
import uuid

import pytest

from grpcchat.client import ChatClient, Connected, Reconnecting
from grpcchat.client.config import AddressError, ClientConfig, parse_addrs
from grpcchat.core.models import Message
from tests.conftest import ServerProcess, cli_env, run_cli
from tests.test_resume import Collector

pytest.importorskip("nats")

BEFORE_KILL = 30
ON_B_BEFORE_KILL = 5
AFTER_KILL = 20


def dead_addr() -> str:
    """An address where nothing listens (a port just given up by the OS)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{probe.getsockname()[1]}"


def shared_store(nats_url: str) -> str:
    return f"{nats_url}?stream=CHAT_{uuid.uuid4().hex}"


async def start(store: str) -> ServerProcess:
    return await asyncio.to_thread(ServerProcess, "--store", store, "--rate", "0", "--quiet")


async def test_a_session_fails_over_to_the_next_address_and_resumes(nats_url: str) -> None:
    store = shared_store(nats_url)
    first, second = await start(store), await start(store)
    both = f"{first.addr},{second.addr}"
    try:
        async with (
            ChatClient(ClientConfig(addr=both, timeout=10)) as sender,
            ChatClient(ClientConfig(addr=both, timeout=10)) as client,
        ):
            async with Collector(client.session("alice", "room", history=0)) as alice:
                connected = [e for e in alice.events if isinstance(e, Connected)]
                assert connected[-1].addr == first.addr
                sent: list[Message] = []
                for i in range(BEFORE_KILL):
                    sent.append((await sender.send("bob", f"before {i}", "room")).message)
                # Some of these may still be on the way when A dies: B's history has them.
                await alice.until(lambda: len(alice.messages()) >= BEFORE_KILL // 2)
                # Posted on B while alice is on A: they reach her live through A's feed of the
                # shared stream, or, if A dies first, from B's history when she resumes there.
                async with ChatClient(ClientConfig(addr=second.addr, timeout=10)) as on_b:
                    for i in range(ON_B_BEFORE_KILL):
                        sent.append((await on_b.send("dave", f"on B {i}", "room")).message)
                alice.reading.clear()
                os.kill(first.process.pid, signal.SIGKILL)
                await asyncio.to_thread(first.process.wait, 10)
                alice.reading.set()
                await alice.until(lambda: alice.count(Connected) >= 2, timeout=15)
                assert client.connection.addr == second.addr
                reconnecting = [e for e in alice.events if isinstance(e, Reconnecting)]
                assert reconnecting[0].addr == second.addr
                assert [e for e in alice.events if isinstance(e, Connected)][-1].addr == (
                    second.addr
                )
                # The sender fails over too: A is gone, so its next send goes to B.
                for i in range(AFTER_KILL):
                    sent.append((await sender.send("bob", f"after {i}", "room")).message)
                assert sender.connection.addr == second.addr
                # Then one more: once it is in, anything late (a duplicate) is in before it.
                sent.append((await sender.send("bob", "the end", "room")).message)
                total = BEFORE_KILL + ON_B_BEFORE_KILL + AFTER_KILL + 1
                await alice.until(lambda: "the end" in [m.text for m in alice.messages()], 15)
            received = alice.messages()
            assert [m.id for m in received] == [m.id for m in sent]
            assert [m.seq for m in received] == list(range(1, total + 1))
            assert len({m.epoch for m in received}) == 1
    finally:
        first.stop()
        second.stop()


async def test_the_first_connection_skips_an_address_that_cannot_be_reached(
    nats_url: str,
) -> None:
    live = await start(shared_store(nats_url))
    try:
        config = ClientConfig(addr=f"{dead_addr()},{live.addr}", timeout=5)
        async with ChatClient(config) as client:
            async with Collector(client.session("carol", "lobby")) as carol:
                assert [e for e in carol.events if isinstance(e, Connected)][-1].addr == live.addr
            await client.send("carol", "hi")
            assert [m.text for m in await client.history("lobby")] == ["hi"]
            assert [r.name for r in await client.rooms()] == ["lobby"]
    finally:
        live.stop()


async def test_send_goes_through_the_live_address(nats_url: str) -> None:
    live = await start(shared_store(nats_url))
    try:
        code, out, err = await asyncio.to_thread(
            run_cli, "send", "--addr", f"{dead_addr()},{live.addr}", "--name", "bob", "hello"
        )
        assert code == 0, err
        assert "seq 1" in out
        # The list works from GRPCCHAT_ADDR too.
        env = cli_env(GRPCCHAT_ADDR=f"{dead_addr()},{live.addr}")
        code, out, err = await asyncio.to_thread(run_cli, "history", "--json", env=env)
        assert code == 0, err
        assert "hello" in out
    finally:
        live.stop()


# Unreachable: exit 3 like any unreachable server (`health` exits 1 for every failure).
@pytest.mark.parametrize(
    ("command", "exit_code"),
    [(["send", "--name", "bob", "hello"], 3), (["history"], 3), (["health"], 1)],
)
def test_no_address_reachable_is_one_clear_line_naming_them_all(
    command: list[str], exit_code: int
) -> None:
    dead1, dead2 = dead_addr(), dead_addr()
    started = time.monotonic()
    code, _, err = run_cli(*command, "--addr", f"{dead1},{dead2}", "--timeout", "2")
    elapsed = time.monotonic() - started
    assert code == exit_code, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "cannot reach a chat server at" in lines[0]
    assert dead1 in lines[0]
    assert dead2 in lines[0]
    assert elapsed < 2 + 5  # the timeout, plus starting Python


@pytest.mark.parametrize(
    ("addr", "wording"),
    [
        ("127.0.0.1:4001,,127.0.0.1:4002", "empty entry"),
        ("127.0.0.1:4001,", "empty entry"),
        ("127.0.0.1:4001,127.0.0.1:4001", "more than once"),
        ("127.0.0.1:4001,nohost", "is not host:port"),
        ("127.0.0.1:99999", "is not host:port"),
        ("bad host:4001", "is not host:port"),
        ("unix:", "names no socket"),
    ],
)
def test_a_bad_address_list_is_a_usage_error(addr: str, wording: str) -> None:
    with pytest.raises(AddressError, match=wording):
        ClientConfig(addr=addr)
    code, _, err = run_cli("history", "--addr", addr)
    assert code == 2
    assert wording in err
    code, _, err = run_cli("send", "--addr", addr, "--name", "bob", "hi")
    assert code == 2
    assert wording in err


def test_addresses_parse_in_order() -> None:
    assert parse_addrs("localhost:4000") == ("localhost:4000",)
    assert parse_addrs("a.example:1, [::1]:2 ,10.0.0.1:3") == (
        "a.example:1",
        "[::1]:2",
        "10.0.0.1:3",
    )
    assert ClientConfig(addr="h1:4001,h2:4002").addrs == ("h1:4001", "h2:4002")
