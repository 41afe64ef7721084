"""What only the SQLite engine promises beyond the contract: history survives a restart, a bad
file stops the server at open with a message saying what to do (never an empty history in its
place), the event loop stays free, and pruned rows really leave the file."""

from __future__ import annotations

import asyncio
import inspect
import os
import re
import sqlite3
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from grpcchat.core.errors import StoreError
from grpcchat.core.history import Appended, HistoryStore, Retention
from grpcchat.server.engines import open_store

REPO_ROOT = Path(__file__).resolve().parent.parent


def url(path: Path) -> str:
    return f"sqlite://{path}"


async def append(
    store: HistoryStore, room: str = "lobby", *, key: str = "", at: datetime | None = None
) -> Appended:
    return await store.append(
        id=os.urandom(8).hex(),
        room=room,
        sender="ann",
        text=f"in {room}",
        sent_at=at or datetime.now(UTC),
        key=key,
    )


def count_rows(path: Path, table: str) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])


async def test_history_survives_close_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    store = await open_store(url(path))
    keyed = await append(store, "a", key="k")
    await append(store, "a")
    await append(store, "b")
    before = {room: await store.read(room) for room in ("a", "b")}
    epoch = store.epoch
    await store.aclose()

    store = await open_store(url(path))
    try:
        assert store.epoch == epoch
        assert {room: await store.read(room) for room in ("a", "b")} == before
        assert await store.rooms() == {"a": 2, "b": 1}
        assert (await append(store, "a")).message.seq == 3
        assert await append(store, "a", key="k") == Appended(keyed.message, duplicate=True)
    finally:
        await store.aclose()


async def test_a_new_file_is_created_with_its_directories(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    absolute = tmp_path / "not" / "yet" / "history.db"
    for store_url, path in [
        (url(absolute), absolute),
        ("sqlite://rel/h.db", tmp_path / "rel" / "h.db"),
    ]:
        store = await open_store(store_url)
        try:
            assert path.is_file()
            assert await store.rooms() == {}
            assert await store.last_seq("lobby") == 0
        finally:
            await store.aclose()


def garbage(path: Path) -> None:
    path.write_bytes(bytes(range(256)) * 64)


async def damaged_history(path: Path) -> None:
    store = await open_store(url(path))
    for i in range(300):
        await append(store, f"room-{i % 3}")
    await store.aclose()
    with path.open("r+b") as file:
        file.seek(3 * 4096)
        file.write(b"\xa5" * 2 * 4096)


def foreign_database(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE accounts (id INTEGER PRIMARY KEY)")
    conn.close()


async def newer_history(path: Path) -> None:
    await (await open_store(url(path))).aclose()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE meta SET value = ? WHERE name = 'schema_version'", ("99",))
    conn.close()


def file_in_the_way(path: Path) -> None:
    path.parent.parent.mkdir()
    path.parent.write_text("")


def unreadable_file(path: Path) -> None:
    path.write_bytes(b"")
    path.chmod(0)


def snapshot(root: Path) -> list[tuple[str, bytes | None]]:
    return sorted(
        (str(p.relative_to(root)), None if p.is_dir() else p.read_bytes()) for p in root.rglob("*")
    )


@pytest.mark.parametrize(
    ("make", "where", "why"),
    [
        pytest.param(garbage, "history.db", "not a readable SQLite database", id="garbage"),
        pytest.param(
            damaged_history,
            "history.db",
            r"(damaged|not a readable SQLite database \(database disk image is malformed)",
            id="damaged",
        ),
        pytest.param(foreign_database, "history.db", "not a grpcchat history", id="foreign"),
        pytest.param(newer_history, "history.db", "newer grpcchat", id="newer"),
        pytest.param(Path.mkdir, "history.db", "is a directory", id="directory"),
        pytest.param(
            file_in_the_way, "sub/file/history.db", "cannot create its directory", id="under-file"
        ),
        pytest.param(
            unreadable_file,
            "history.db",
            "no permission",
            id="unreadable",
            marks=pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file"),
        ),
    ],
)
async def test_an_unusable_file_is_refused_at_open_and_left_alone(
    tmp_path: Path, make: Callable[[Path], object], where: str, why: str
) -> None:
    path = tmp_path / where
    if inspect.isawaitable(made := make(path)):
        await made
    before = snapshot(tmp_path)
    with pytest.raises(StoreError) as error:
        await open_store(url(path))
    message = str(error.value)
    assert f"cannot use the history file {path}: " in message
    assert re.search(why, message)
    assert "Move it away" in message
    assert "--store memory://" in message
    assert snapshot(tmp_path) == before


async def test_appends_leave_the_event_loop_free(tmp_path: Path) -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    store = await open_store(url(tmp_path / "history.db"))
    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    try:
        started = ticks
        for _ in range(500):
            await append(store)
        # Each append waits for the store's thread at least once, and the ticker, always
        # ready, runs during every such wait.
        assert ticks - started >= 500
    finally:
        task.cancel()
        await store.aclose()


async def test_pruned_rows_leave_the_file(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    retention = Retention(
        max_messages=3, max_age=timedelta(hours=1), dedup_window=timedelta(minutes=1)
    )
    store = await open_store(url(path), retention)
    for _ in range(10):
        await append(store, "counted")
    long_ago = datetime.now(UTC) - timedelta(hours=2)
    await append(store, "aged", key="old", at=long_ago)
    await append(store, "aged", key="fresh")
    assert count_rows(path, "messages") == 3 + 2
    assert count_rows(path, "dedup") == 2
    await store.aclose()

    # Opening deletes what expired while the file was closed.
    store = await open_store(url(path), retention)
    try:
        assert count_rows(path, "messages") == 3 + 1
        assert count_rows(path, "dedup") == 1
        assert await store.last_seq("aged") == 2
    finally:
        await store.aclose()


async def test_a_closed_store_refuses_calls(tmp_path: Path) -> None:
    store = await open_store(url(tmp_path / "history.db"))
    await store.aclose()
    await store.aclose()
    with pytest.raises(StoreError, match="closed"):
        await append(store)


async def test_an_append_survives_the_process_dying_right_after(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    script = f"""
import asyncio, os
from datetime import UTC, datetime
from grpcchat.server.engines import open_store

async def main():
    store = await open_store({url(path)!r})
    for i in range(3):
        now = datetime.now(UTC)
        await store.append(id=str(i), room="lobby", sender="ann", text="hi", sent_at=now)
    os._exit(0)  # no aclose, no checkpoint: only what each append made durable

asyncio.run(main())
"""
    process = await asyncio.create_subprocess_exec(sys.executable, "-c", script, cwd=REPO_ROOT)
    assert await asyncio.wait_for(process.wait(), 30) == 0
    store = await open_store(url(path))
    try:
        assert [m.id for m in await store.read("lobby")] == ["0", "1", "2"]
    finally:
        await store.aclose()
