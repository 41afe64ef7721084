"""History over the real wire: paging, durability across restarts, epochs, the `history` and
`send --key` commands, join's initial replay, idempotent sends, and unusable history files."""

from __future__ import annotations

import json
import os
import re
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest

from grpcchat.client import ChatClient
from grpcchat.client.config import ClientConfig
from grpcchat.core.errors import InvalidInput
from grpcchat.core.limits import Limits
from grpcchat.core.models import Message, RoomJoined
from grpcchat.gen.chat.v1 import chat_service_pb2 as pb
from grpcchat.gen.chat.v1 import chat_service_pb2_grpc as pb_grpc
from grpcchat.server import ChatServer
from grpcchat.server.config import ServerConfig
from grpcchat.server.servicer import ChatServicer
from tests.conftest import cli_env, run_cli, run_cli_async
from tests.helpers import Follower


@pytest.fixture
def server_config(tmp_path: Path) -> ServerConfig:
    # History tests run on the embedded default engine, SQLite, in a file of their own.
    return ServerConfig(
        port=0,
        store=f"sqlite://{tmp_path / 'h.db'}",
        limits=Limits(rate=0, request_rate=0),
        grace_period=1.0,
    )


async def post(
    client: ChatClient, count: int, room: str = "", sender: str = "bot"
) -> list[Message]:
    return [(await client.send(sender, f"m{i}", room)).message for i in range(1, count + 1)]


def seqs(messages: list[Message]) -> list[int]:
    return [m.seq for m in messages]


# -- the History RPC ----------------------------------------------------------------------------


async def test_history_pages_before_and_after_in_both_orders(client: ChatClient) -> None:
    sent = await post(client, 10, "paging")
    assert seqs(sent) == list(range(1, 11))
    page = client.history

    assert seqs(await page("paging", limit=3)) == [1, 2, 3]
    assert seqs(await page("paging", limit=3, newest_first=True)) == [10, 9, 8]
    assert seqs(await page("paging", after=3, limit=3)) == [4, 5, 6]
    assert seqs(await page("paging", before=8, limit=3, newest_first=True)) == [7, 6, 5]
    # Oldest first with only an upper bound starts at the oldest message.
    assert seqs(await page("paging", before=8, limit=3)) == [1, 2, 3]
    assert seqs(await page("paging", after=3, before=7)) == [4, 5, 6]
    assert seqs(await page("paging", after=3, before=7, newest_first=True)) == [6, 5, 4]
    assert await page("paging", after=10) == []
    assert await page("paging", after=4, before=5) == []
    assert await page("no-such-room") == []

    # Paging backwards from the newest, page by page, visits every message once.
    seen: list[Message] = []
    before = 0
    while batch := await page("paging", before=before, limit=4, newest_first=True):
        seen += batch
        before = batch[-1].seq
    assert seqs(seen) == list(range(10, 0, -1))
    # What history returns is exactly what was accepted.
    assert sorted(seen, key=lambda m: m.seq) == sent


async def test_history_limit_defaults_to_50_and_is_capped_at_1000(
    server: ChatServer, addr: str
) -> None:
    # Filled through the store itself: the cap needs more than a thousand messages.
    store = server.hub.store
    for i in range(1, 1011):
        await store.append(id=f"id{i}", room="big", sender="bot", text=f"m{i}", sent_at=now())
    async with grpc.aio.insecure_channel(addr) as channel:
        stub = pb_grpc.ChatServiceStub(channel)
        default = await stub.History(pb.HistoryRequest(room="big"))
        assert [m.seq for m in default.messages] == list(range(1, 51))
        capped = await stub.History(pb.HistoryRequest(room="big", limit=5000, newest_first=True))
        assert [m.seq for m in capped.messages] == list(range(1010, 10, -1))
        one = await stub.History(pb.HistoryRequest(room="big", limit=1, after_seq=1009))
        assert [(m.seq, m.text, m.room) for m in one.messages] == [(1010, "m1010", "big")]
        assert one.epoch == store.epoch
        assert {m.epoch for m in capped.messages} == {store.epoch}


def now() -> datetime:
    return datetime.now(UTC)


@pytest.mark.parametrize("room", ["Lobby", "has space", "-dash", "x" * 33])
async def test_history_of_a_bad_room_is_invalid_argument(
    addr: str, client: ChatClient, room: str
) -> None:
    async with grpc.aio.insecure_channel(addr) as channel:
        stub = pb_grpc.ChatServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.History(pb.HistoryRequest(room=room))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "room name" in (caught.value.details() or "")
    with pytest.raises(InvalidInput):
        await client.history(room)


# -- durability and epochs ----------------------------------------------------------------------


async def test_messages_survive_a_restart_in_the_same_epoch(tmp_path: Path) -> None:
    config = ServerConfig(
        port=0, store=f"sqlite://{tmp_path / 'h.db'}", limits=Limits(rate=0, request_rate=0)
    )
    async with ChatServer(config) as first:
        epoch = first.hub.store.epoch
        async with ChatClient(ClientConfig(addr=f"127.0.0.1:{first.port}")) as client:
            before = await post(client, 3, "ops", sender="alice")
    async with ChatServer(config) as second:
        assert second.hub.store.epoch == epoch
        async with ChatClient(ClientConfig(addr=f"127.0.0.1:{second.port}")) as client:
            assert await client.history("ops") == before
            # Numbering carries on where it stopped.
            after = (await client.send("alice", "after the restart", "ops")).message
            assert (after.seq, after.epoch) == (4, epoch)
            assert {r.name: r.messages for r in await client.rooms()} == {"ops": 4}


async def test_memory_store_starts_a_new_empty_epoch_each_time() -> None:
    config = ServerConfig(port=0, store="memory://", limits=Limits(rate=0, request_rate=0))
    epochs = []
    for _ in range(2):
        async with (
            ChatServer(config) as server,
            ChatClient(ClientConfig(addr=f"127.0.0.1:{server.port}")) as client,
        ):
            assert await client.history() == []
            message = (await client.send("alice", "hi")).message
            assert message.seq == 1
            epochs.append(message.epoch)
    assert all(epochs)
    assert epochs[0] != epochs[1]


# -- the history command ------------------------------------------------------------------------


async def test_history_command_prints_the_latest_messages_oldest_first(
    client: ChatClient, addr: str
) -> None:
    sent = await post(client, 5, "ops", sender="carol")
    await client.send("carol", "elsewhere", "other")

    result = await run_cli_async(
        "history", "--addr", addr, "--room", "ops", "--limit", "3", "--json"
    )
    assert result.returncode == 0, result.stderr
    objects = [json.loads(line) for line in result.stdout.splitlines()]
    assert [o["seq"] for o in objects] == [3, 4, 5]
    assert [o["id"] for o in objects] == [m.id for m in sent[2:]]
    assert [o["text"] for o in objects] == ["m3", "m4", "m5"]
    assert {(o["room"], o["sender"], o["epoch"]) for o in objects} == {
        ("ops", "carol", sent[0].epoch)
    }
    assert [datetime.fromisoformat(o["sent_at"]) for o in objects] == [m.sent_at for m in sent[2:]]

    # Without --json: the lines `join` prints, "HH:MM:SS carol: m4", oldest first.
    plain = await run_cli_async("history", "--addr", addr, "--room", "ops", "--limit", "2")
    assert plain.returncode == 0, plain.stderr
    lines = plain.stdout.splitlines()
    assert [line.split(" ", 1)[1] for line in lines] == ["carol: m4", "carol: m5"]

    empty = await run_cli_async("history", "--addr", addr, "--room", "quiet")
    assert (empty.returncode, empty.stdout) == (0, "")
    assert "no messages in #quiet" in empty.stderr


# -- join's initial replay ----------------------------------------------------------------------


async def test_join_replays_the_latest_messages_before_room_joined(client: ChatClient) -> None:
    sent = await post(client, 5)
    async with Follower(client.session("alice", history=3)) as alice:
        *replayed, joined = alice.before_connected
        assert replayed == sent[2:]
        assert isinstance(joined, RoomJoined)
        assert joined.position == sent[-1].position
        live = (await client.send("bob", "live")).message
        assert await alice.messages(1) == [live]
    # Asking for more than there is replays everything; history=0 replays nothing.
    async with Follower(client.session("dave", history=50)) as dave:
        assert [e.seq for e in dave.before_connected if isinstance(e, Message)] == list(range(1, 7))
    async with Follower(client.session("erin")) as erin:
        assert [type(e) for e in erin.before_connected] == [RoomJoined]


async def test_direct_messages_are_not_stored(client: ChatClient) -> None:
    async with (
        Follower(client.session("alice")) as alice,
        Follower(client.session("bob")) as bob,
    ):
        direct = (await alice.session.send("just for you", recipient="bob")).message
        assert (direct.recipient, direct.room, direct.seq) == ("bob", "", 0)
        [received] = await bob.messages(1)
        assert received.id == direct.id
        assert await client.history() == []
        assert all(r.messages == 0 for r in await client.rooms())
        # A room message after it still gets the room's first position.
        public = (await alice.session.send("for everyone")).message
        assert public.seq == 1
        assert seqs(await client.history()) == [1]


# -- idempotent sends ---------------------------------------------------------------------------


async def test_a_repeated_key_returns_the_original_and_posts_nothing(client: ChatClient) -> None:
    async with Follower(client.session("watcher")) as watcher:
        first = await client.send("alice", "pay 10 EUR", key="k-1")
        again = await client.send("alice", "pay 10 EUR (retry)", key="k-1")
        assert not first.duplicate
        assert again.duplicate
        assert again.message == first.message
        # The same key from someone else is someone else's message.
        other = await client.send("bob", "pay 10 EUR", key="k-1")
        assert not other.duplicate
        assert other.message.id != first.message.id
        assert other.message.seq == first.message.seq + 1
        # The duplicate was not delivered either: the next thing live is bob's message.
        received = await watcher.messages(2)
        assert [m.id for m in received] == [first.message.id, other.message.id]
    history = await client.history()
    assert [(m.sender, m.text) for m in history] == [("alice", "pay 10 EUR"), ("bob", "pay 10 EUR")]


async def test_send_command_with_the_same_key_twice_posts_once(
    client: ChatClient, addr: str
) -> None:
    args = ("send", "--addr", addr, "--name", "bot", "--key", "deploy-42", "deployed")
    first = await run_cli_async(*args)
    assert first.returncode == 0, first.stderr
    assert "#lobby seq 1" in first.stdout
    assert "already sent" not in first.stdout
    second = await run_cli_async(*args)
    assert second.returncode == 0, second.stderr
    assert "#lobby seq 1" in second.stdout
    assert "(already sent: not posted again)" in second.stdout
    as_json = await run_cli_async(*args, "--json")
    assert as_json.returncode == 0, as_json.stderr
    reply = json.loads(as_json.stdout)
    assert (reply["seq"], reply["duplicate"]) == (1, True)
    [stored] = await client.history()
    assert (stored.id, stored.text, stored.sender) == (reply["id"], "deployed", "bot")


@pytest.fixture
def lossy_send(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Servers started after this fixture post the first Send, then fail it as UNAVAILABLE: the
    message is stored but the client never hears so (a connection lost at the worst moment).
    Returns the ids of messages whose answer was lost."""
    original = ChatServicer.Send
    lost: list[str] = []

    async def send(self: ChatServicer, request: pb.SendRequest, context: Any) -> pb.SendResponse:
        response = await original(self, request, context)
        if not lost:
            lost.append(response.message.id)
            await context.abort(grpc.StatusCode.UNAVAILABLE, "connection reset (lost answer)")
        return response

    monkeypatch.setattr(ChatServicer, "Send", send)
    return lost


@pytest.mark.parametrize("key", ["", "chosen-key"])
async def test_a_retry_after_a_lost_answer_never_doubles_a_message(
    lossy_send: list[str], server_config: ServerConfig, key: str
) -> None:
    async with (
        ChatServer(server_config) as server,
        ChatClient(ClientConfig(addr=f"127.0.0.1:{server.port}", timeout=5)) as client,
    ):
        sent = await client.send("alice", "exactly once", key=key)
        assert lossy_send == [sent.message.id]  # the answer to the first attempt was lost
        [stored] = await client.history()
        assert stored == sent.message
        # With a key of its own making, a duplicate can only be this call's own first attempt:
        # that message was posted by this call, not before it.
        assert sent.duplicate == bool(key)


async def test_send_command_retry_after_a_lost_answer_posts_once(
    lossy_send: list[str], server_config: ServerConfig
) -> None:
    async with (
        ChatServer(server_config) as server,
        ChatClient(ClientConfig(addr=f"127.0.0.1:{server.port}", timeout=5)) as client,
    ):
        addr = f"127.0.0.1:{server.port}"
        result = await run_cli_async("send", "--addr", addr, "--name", "bot", "--json", "deployed")
        assert result.returncode == 0, result.stderr
        reply = json.loads(result.stdout)
        assert lossy_send == [reply["id"]]
        assert "duplicate" not in reply
        assert [m.id for m in await client.history()] == [reply["id"]]


# -- unusable history files ---------------------------------------------------------------------


def _garbage(path: Path) -> None:
    path.write_bytes(b"this is not a database\x00\xff" * 200)


def _foreign_sqlite(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
        conn.execute("INSERT INTO invoices (total) VALUES (12.5)")
    conn.close()


def _truncated_history(path: Path) -> None:
    """A real grpcchat history cut short, as a failed copy leaves it."""
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)")
        conn.execute("CREATE TABLE filler (data BLOB)")
        conn.executemany("INSERT INTO filler VALUES (?)", [(os.urandom(3000),) for _ in range(50)])
    conn.close()
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (_garbage, "not a readable SQLite database"),
        (_foreign_sqlite, "not a grpcchat history"),
        (_truncated_history, "malformed|damaged"),
    ],
    ids=["garbage", "foreign-sqlite", "truncated"],
)
def test_an_unusable_history_file_is_one_clear_red_line(
    tmp_path: Path, make: object, reason: str
) -> None:
    path = tmp_path / "history.db"
    assert callable(make)
    make(path)
    before = sorted((p.name, p.is_dir() or p.read_bytes()) for p in tmp_path.iterdir())
    env = cli_env(FORCE_COLOR="1")
    del env["NO_COLOR"]
    result = run_cli("serve", "--port", "0", "--data-dir", str(tmp_path), env=env)
    assert result.returncode == 1
    assert "listening" not in result.stdout
    assert "Traceback" not in result.stderr
    [line] = result.stderr.strip().splitlines()
    assert "\x1b[1;31m" in line  # bold red
    assert f"error: cannot use the history file {path}" in line
    assert re.search(reason, line)
    assert "--store memory://" in line  # and what to do about it
    # Nothing was repaired, replaced or added: the file is the user's to rescue.
    assert sorted((p.name, p.is_dir() or p.read_bytes()) for p in tmp_path.iterdir()) == before
