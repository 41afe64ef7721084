"""What only the SQLite engine promises beyond the contract: history survives a restart (and an
upgrade of its schema), a bad file stops the server at open with a message saying what to do
(never an empty history in its place), the event loop stays free, pruned rows really leave the
file, a failure of SQLite is all or nothing and never reaches an append it did not stop, and
listing rooms reads no messages."""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import re
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

import pytest

from grpcchat.core.errors import StoreError
from grpcchat.core.history import Appended, HistoryStore, Retention, RoomCount
from grpcchat.core.models import Relation, RelationKind
from grpcchat.server.engines import open_store
from grpcchat.store import sqlite as engine
from grpcchat.store import sqlite_database
from grpcchat.store.sqlite import SqliteStore
from tests.conftest import cli_env, grpcchat_command

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


def count_rows(path: Path, table: str, where: str = "1") -> int:
    return int(query(path, f"SELECT COUNT(*) FROM {table} WHERE {where}")[0][0])


def query(path: Path, sql: str) -> list[tuple[object, ...]]:
    """Run `sql` on the file through a connection of its own, committed."""
    conn = sqlite3.connect(path)
    try:
        with conn:
            return conn.execute(sql).fetchall()
    finally:
        conn.close()


async def eventually(check: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait until `check()` holds: for the store's own background job."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out waiting for the maintenance job"
        await asyncio.sleep(0.01)


async def open_sqlite(path: Path, retention: Retention | None = None) -> SqliteStore:
    store = await open_store(url(path), retention)
    assert isinstance(store, SqliteStore)
    return store


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
        assert await store.rooms() == [RoomCount("a", 2), RoomCount("b", 1)]
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
            assert await store.rooms() == []
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


async def test_a_directory_at_the_path_is_told_to_name_a_file_not_moved_away(
    tmp_path: Path,
) -> None:
    """`--store sqlite:///` was told "it is a directory. Move it away"."""
    with pytest.raises(StoreError) as error:
        await open_store(url(tmp_path))
    assert str(error.value) == (
        f"cannot use the history file {tmp_path}: it is a directory; give the path of a file "
        f"(such as {tmp_path / 'history.db'}), or the directory as --data-dir"
    )


def test_a_history_this_user_may_only_read_is_refused_at_start(tmp_path: Path) -> None:
    """SQLite opens it read-only: the server started, said SERVING, and refused every send
    (naming the file, to the clients only). Root writes any file: it runs without that power."""
    path = tmp_path / "history.db"
    asyncio.run(_made(path))
    path.chmod(0o444)
    powers = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"]
    command = [*(powers if os.geteuid() == 0 else []), *grpcchat_command(
        "serve", "--port", "0", "--data-dir", str(tmp_path)
    )]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=30, env=cli_env())
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip() == (
        f"error: cannot use the history file {path}: this user may not read and write it "
        "(Permission denied): give it access, or choose another path"
    )
    # Refused before SQLite read it: read-only -wal and -shm files it left beside it kept the
    # file refused once it was given access.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["history.db"]
    path.chmod(0o644)
    asyncio.run(_made(path))


async def _made(path: Path) -> None:
    await (await open_store(url(path))).aclose()


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc")
async def test_a_directory_that_cannot_be_made_is_not_told_to_move_anything_away() -> None:
    """Nothing is in the way of /proc/nope (nothing can be made there): moving something away
    was the advice, as for a damaged file."""
    path = Path("/proc/nope/history.db")
    with pytest.raises(StoreError) as error:
        await open_store(url(path))
    message = str(error.value)
    assert f"cannot use the history file {path}: cannot create its directory /proc/nope" in message
    assert "Move it away" not in message
    assert "Choose another --data-dir or path, or use --store memory://" in message


async def test_a_file_another_server_has_open_is_refused_until_it_closes(
    tmp_path: Path,
) -> None:
    """Two servers on one file would each deliver only their own appends live."""
    path = tmp_path / "history.db"
    first = await open_sqlite(path)
    try:
        with pytest.raises(StoreError) as refused:
            await open_sqlite(path)
        assert str(refused.value) == (
            f"cannot use the history file {path}: another grpcchat serve uses it; stop that "
            "one, or give this one another --data-dir (or --store)"
        )
    finally:
        await first.aclose()
    second = await open_sqlite(path)  # given back with the close
    await second.aclose()


async def test_a_file_another_program_holds_locked_is_not_called_unreadable(
    tmp_path: Path,
) -> None:
    """After SQLite's busy timeout (5 s): a lock is no reason to move a history away, which is
    what "not a readable SQLite database ... Move it away" told the operator to do."""
    path = tmp_path / "history.db"
    await (await open_sqlite(path)).aclose()
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("PRAGMA locking_mode = EXCLUSIVE")
        other.execute("BEGIN EXCLUSIVE")
        with pytest.raises(StoreError) as refused:
            await open_sqlite(path)
        assert "another program holds it locked" in str(refused.value)
        assert "Move it away" not in str(refused.value)
    finally:
        other.close()


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

    # The store's job deletes what expired while the file was closed as soon as it opens.
    store = await open_store(url(path), retention)
    try:
        await eventually(lambda: count_rows(path, "messages") == 3 + 1)
        await eventually(lambda: count_rows(path, "dedup") == 1)
        assert await store.last_seq("aged") == 2
        assert await store.rooms() == [RoomCount("aged", 1), RoomCount("counted", 3)]
        assert query(path, "SELECT room, messages FROM rooms ORDER BY room") == [
            ("aged", 1),
            ("counted", 3),
        ]
    finally:
        await store.aclose()


def _files_holding(directory: Path, secret: bytes) -> list[str]:
    return [f.name for f in sorted(directory.glob("history.db*")) if secret in f.read_bytes()]


async def test_a_deleted_text_leaves_every_file_at_once(tmp_path: Path) -> None:
    """The tables lose it with the delete's commit; the WAL kept the pages as they were (six
    copies of it) until a checkpoint, up to 40 MB of appends later."""
    path = tmp_path / "history.db"
    store = await open_sqlite(path)
    try:
        secret = "my SECRET-PASSWORD-42, oops"
        target = "m" * 32
        for id, text, relation in (
            (target, secret, None),
            ("e" * 32, secret, Relation(RelationKind.EDIT, target)),
            ("d" * 32, "", Relation(RelationKind.DELETE, target)),
        ):
            await store.append(
                id=id, room="r", sender="ann", text=text, sent_at=datetime.now(UTC),
                key=id[0], relation=relation,
            )  # fmt: skip
        assert await asyncio.to_thread(_files_holding, tmp_path, b"SECRET-PASSWORD-42") == []
    finally:
        await store.aclose()


async def test_the_maintenance_job_runs_every_interval_in_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine, "MAINTENANCE_INTERVAL", 0.01)
    monkeypatch.setattr(sqlite_database, "MAINTENANCE_BATCH", 3)
    path = tmp_path / "history.db"
    store = await open_store(url(path), Retention(max_age=timedelta(hours=1)))
    try:
        long_ago = datetime.now(UTC) - timedelta(hours=2)
        for i in range(10):
            await append(store, f"room-{i % 2}", at=long_ago)
        await append(store, "room-1")
        # Appended after open: only a later run of the job can delete them.
        await eventually(lambda: count_rows(path, "messages") == 1)
        assert query(path, "SELECT room, messages FROM rooms ORDER BY room") == [
            ("room-0", 0),
            ("room-1", 1),
        ]
        assert await store.rooms() == [RoomCount("room-1", 1)]
    finally:
        await store.aclose()


async def test_a_lower_count_limit_applies_at_open(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    store = await open_store(url(path), Retention(max_messages=5))
    for _ in range(5):
        await append(store)
    await store.aclose()
    store = await open_store(url(path), Retention(max_messages=2))
    try:
        assert [m.seq for m in await store.read("lobby")] == [4, 5]
        assert await store.rooms() == [RoomCount("lobby", 2)]
        assert count_rows(path, "messages") == 2
    finally:
        await store.aclose()


# -- failures: all or nothing, and never after the commit -----------------------------------


async def test_appends_the_file_cannot_take_are_logged_and_refused_without_its_path(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A full disk, or a file made read-only under the server, refused every send: the
    clients were told the file's path, and the operator nothing at all."""
    path = tmp_path / "history.db"
    store = await open_store(url(path))
    query(
        path,
        "CREATE TRIGGER full_disk BEFORE INSERT ON messages"
        " BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END",
    )
    caplog.set_level(logging.WARNING, logger="grpcchat.store")
    try:
        for _ in range(3):
            with pytest.raises(StoreError) as refused:
                await append(store)
            assert str(refused.value) == (
                "the server's history failed (database or disk is full); try again later"
            )
        [logged] = [r for r in caplog.records if getattr(r, "event", "") == "history_failed"]
        assert logged.levelno == logging.ERROR  # once, not once a send
        assert f"the history file {path} cannot take messages" in logged.getMessage()
        query(path, "DROP TRIGGER full_disk")
        assert (await append(store)).message.seq == 1
    finally:
        await store.aclose()


async def test_a_failing_maintenance_job_never_fails_an_append(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "history.db"
    retention = Retention(max_messages=2, max_age=timedelta(hours=1))
    store = await open_store(url(path), retention)
    # Deleting the expired message fails, as it would on a full disk; pruning by count does not.
    query(
        path,
        "CREATE TRIGGER full_disk BEFORE DELETE ON messages WHEN OLD.room = 'stuck'"
        " BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END",
    )
    await append(store, "stuck", at=datetime.now(UTC) - timedelta(hours=2))
    await store.aclose()

    caplog.set_level(logging.WARNING, logger="grpcchat.store")
    caplog.clear()
    failures = lambda: [r for r in caplog.records if r.name == "grpcchat.store"]  # noqa: E731
    monkeypatch.setattr(engine, "MAINTENANCE_INTERVAL", 0.01)
    store = await open_store(url(path), retention)
    try:
        await eventually(lambda: len(failures()) >= 1)
        appended = [await append(store, "lobby", key=f"k{i}") for i in range(5)]
        assert [(a.message.seq, a.duplicate) for a in appended] == [(i, False) for i in range(1, 6)]
        assert await store.read("lobby") == [a.message for a in appended[-2:]]
        assert await store.rooms() == [RoomCount("lobby", 2)]
        await eventually(lambda: len(failures()) >= 3)  # retried at every interval
        record = failures()[0]
        assert record.levelno == logging.WARNING
        assert record.exc_info is None
        assert "\n" not in record.getMessage()
        assert "database or disk is full" in record.getMessage()

        query(path, "DROP TRIGGER full_disk")
        await eventually(lambda: count_rows(path, "messages", "room = 'stuck'") == 0)
        assert await store.rooms() == [RoomCount("lobby", 2)]
    finally:
        await store.aclose()


FAILING_STATEMENTS = [
    # Each trigger makes one statement of the third append fail, as a full disk would.
    pytest.param("BEFORE UPDATE ON rooms", id="numbering"),
    pytest.param("BEFORE INSERT ON messages", id="storing"),
    pytest.param("BEFORE INSERT ON dedup", id="remembering-the-key"),
    pytest.param("BEFORE DELETE ON messages", id="pruning-by-count"),
]


@pytest.mark.parametrize("when", FAILING_STATEMENTS)
async def test_a_failed_append_leaves_nothing_behind(tmp_path: Path, when: str) -> None:
    path = tmp_path / "history.db"
    store = await open_store(url(path), Retention(max_messages=2))
    try:
        kept = [(await append(store, key=f"k{i}")).message for i in range(2)]
        query(path, f"CREATE TRIGGER fail {when} BEGIN SELECT RAISE(ABORT, 'disk I/O error'); END")
        with pytest.raises(StoreError, match="disk I/O error") as error:
            await append(store, key="again")
        assert not isinstance(error.value, sqlite3.Error)
        assert await store.last_seq("lobby") == 2
        assert await store.read("lobby") == kept
        assert await store.rooms() == [RoomCount("lobby", 2)]
        assert query(path, "SELECT room, last_seq, messages FROM rooms") == [("lobby", 2, 2)]
        assert count_rows(path, "dedup", "key = 'again'") == 0

        query(path, "DROP TRIGGER fail")
        retried = await append(store, key="again")
        assert (retried.message.seq, retried.duplicate) == (3, False)
        assert await append(store, key="again") == Appended(retried.message, duplicate=True)
        assert await store.read("lobby") == [kept[1], retried.message]
        assert await store.rooms() == [RoomCount("lobby", 2)]
    finally:
        await store.aclose()


# -- group commit ---------------------------------------------------------------------------


def hold_the_thread(store: SqliteStore) -> threading.Event:
    """Keep the store's thread busy until the returned event is set, so that every append
    called meanwhile waits in one queue: the next group."""
    started, release = threading.Event(), threading.Event()

    def hold() -> None:
        started.set()
        release.wait(10)

    store._executor.submit(hold)
    assert started.wait(10)
    return release


async def in_one_group(store: SqliteStore, calls: list[Awaitable[object]]) -> list[object]:
    """Call each (in order) while the thread is held, then let the group run; the outcome of
    each, an exception for a failed one."""
    release = hold_the_thread(store)
    try:
        tasks = [asyncio.ensure_future(call) for call in calls]
        await asyncio.sleep(0)  # every task calls `append` now, in order
    finally:
        release.set()
    return await asyncio.gather(*tasks, return_exceptions=True)


async def statements_of(store: SqliteStore, calls: list[Awaitable[object]]) -> list[str]:
    """The statements the group of `calls` ran on the store's connection."""
    conn = store._db._conn
    statements: list[str] = []
    await store._run(partial(conn.set_trace_callback, statements.append))
    try:
        await in_one_group(store, calls)
    finally:
        await store._run(partial(conn.set_trace_callback, None))
    return statements


async def test_waiting_appends_commit_as_one_transaction_in_call_order(tmp_path: Path) -> None:
    store = await open_sqlite(tmp_path / "history.db")
    try:
        at = datetime.now(UTC)
        calls = [append(store, "a" if i % 3 else "b", key=f"k{i % 40}", at=at) for i in range(60)]
        statements = await statements_of(store, calls)
        # (The maintenance job may run a transaction of its own meanwhile.)
        transactions = " ".join(statements).split("BEGIN IMMEDIATE")[1:]
        storing = [t for t in transactions if "INSERT INTO messages" in t]
        assert len(storing) == 1
        assert storing[0].count("INSERT INTO messages") == 40
        assert storing[0].count("COMMIT") == 1
        a, b = await store.read("a", limit=100), await store.read("b", limit=100)
        assert [m.seq for m in a] == list(range(1, len(a) + 1))
        assert [m.seq for m in b] == list(range(1, len(b) + 1))
        # Keys k0..k39 once each; the last 20 calls repeated k0..k19 within the group.
        assert len(a) + len(b) == 40
        assert await store.rooms() == [RoomCount("a", len(a)), RoomCount("b", len(b))]
    finally:
        await store.aclose()


async def test_the_appends_of_one_turn_of_the_loop_are_one_group(tmp_path: Path) -> None:
    # No thread held here: the drain is handed over only once every task of the turn has
    # queued its append (handed over at once, the thread took the first one alone).
    store = await open_sqlite(tmp_path / "history.db")
    try:
        conn = store._db._conn
        statements: list[str] = []
        await store._run(partial(conn.set_trace_callback, statements.append))
        await asyncio.gather(*(append(store, key=f"k{i}") for i in range(30)))
        await store._run(partial(conn.set_trace_callback, None))
        transactions = " ".join(statements).split("BEGIN IMMEDIATE")[1:]
        storing = [t for t in transactions if "INSERT INTO messages" in t]
        assert [t.count("INSERT INTO messages") for t in storing] == [30]
    finally:
        await store.aclose()


async def test_a_read_sees_an_append_whose_group_is_not_handed_over_yet(tmp_path: Path) -> None:
    store = await open_sqlite(tmp_path / "history.db")
    try:
        appending = asyncio.ensure_future(append(store))
        await asyncio.sleep(0)  # the append is queued; its group waits for the turn to end
        assert appending.done() is False
        assert [m.seq for m in await store.read("lobby")] == [1]
        assert (await appending).message.seq == 1
    finally:
        await store.aclose()


async def test_closing_stores_the_appends_queued_before_it(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    store = await open_sqlite(path)
    appending = asyncio.ensure_future(append(store))
    await asyncio.sleep(0)
    await store.aclose()
    assert (await appending).message.seq == 1
    reopened = await open_sqlite(path)
    try:
        assert [m.seq for m in await reopened.read("lobby")] == [1]
    finally:
        await reopened.aclose()


async def test_a_group_of_new_keys_looks_them_up_in_one_statement(tmp_path: Path) -> None:
    store = await open_sqlite(tmp_path / "history.db")
    try:
        await append(store, key="k0")
        calls = [append(store, key=f"k{i}") for i in range(1, 31)]
        statements = await statements_of(store, calls)
        transactions = " ".join(statements).split("BEGIN IMMEDIATE")[1:]
        [storing] = [t for t in transactions if "INSERT INTO messages" in t]
        assert storing.count("JOIN dedup") == 1  # the group's keys, all at once
        assert storing.count("FROM dedup") == 0  # none is a repeat: no lookup of its own
        assert [m.seq for m in await store.read("lobby")] == list(range(1, 32))
        again = await append(store, key="k7")
        assert again.duplicate
        assert again.message.seq == 8
        odd = 'q"\\é😀\t'  # survives the JSON the group's keys are looked up with
        first = await append(store, key=odd)
        [repeat] = await in_one_group(store, [append(store, key=odd)])
        assert isinstance(repeat, Appended)
        assert repeat.duplicate
        assert repeat.message.seq == first.message.seq
    finally:
        await store.aclose()


async def test_each_append_of_a_group_is_answered_with_its_own_message(tmp_path: Path) -> None:
    store = await open_sqlite(tmp_path / "history.db")
    try:
        at = datetime.now(UTC)
        calls = [append(store, key=key, at=at) for key in ["x", "", "y", "x", "", "y"]]
        results = await in_one_group(store, calls)
        assert all(isinstance(r, Appended) for r in results)
        got = [(r.message.seq, r.duplicate) for r in results if isinstance(r, Appended)]
        assert got == [(1, False), (2, False), (3, False), (1, True), (4, False), (3, True)]
        assert [m.seq for m in await store.read("lobby")] == [1, 2, 3, 4]
    finally:
        await store.aclose()


async def test_a_group_writes_each_rooms_row_and_prunes_it_once(tmp_path: Path) -> None:
    store = await open_sqlite(tmp_path / "history.db", Retention(max_messages=3))
    try:
        calls = [append(store, "a" if i % 3 else "b") for i in range(15)]
        statements = await statements_of(store, calls)
        transactions = " ".join(statements).split("BEGIN IMMEDIATE")[1:]
        [storing] = [t for t in transactions if "INSERT INTO messages" in t]
        assert storing.count("INSERT INTO messages") == 15
        # Once a room, not once a message: the row, and what the group pushed out.
        assert storing.count("INSERT INTO rooms") == 2
        assert storing.count("DELETE FROM messages") == 2
        assert [m.seq for m in await store.read("a")] == [8, 9, 10]
        assert [m.seq for m in await store.read("b")] == [3, 4, 5]
        assert await store.rooms() == [RoomCount("a", 3), RoomCount("b", 3)]
        assert await store.last_seq("a") == 10
    finally:
        await store.aclose()


FAILING_IN_A_GROUP = [
    pytest.param("BEFORE INSERT ON messages WHEN NEW.text = 'in bad'", id="storing"),
    pytest.param("BEFORE INSERT ON dedup WHEN NEW.key = 'bad'", id="remembering-the-key"),
    pytest.param("BEFORE UPDATE ON rooms WHEN NEW.room = 'bad'", id="numbering"),
]


@pytest.mark.parametrize("when", FAILING_IN_A_GROUP)
async def test_a_failing_append_fails_only_itself_within_its_group(
    tmp_path: Path, when: str
) -> None:
    path = tmp_path / "history.db"
    store = await open_sqlite(path)
    try:
        await append(store, "bad")  # the room exists: numbering it next is an UPDATE
        query(path, f"CREATE TRIGGER fail {when} BEGIN SELECT RAISE(ABORT, 'disk I/O error'); END")
        calls = [
            append(store, key="k0"),
            append(store, "bad", key="bad"),
            append(store, key="k2"),
            append(store, "other"),
        ]
        ok0, failed, ok2, other = await in_one_group(store, calls)
        assert isinstance(failed, StoreError)
        assert "disk I/O error" in str(failed)
        assert isinstance(ok0, Appended)
        assert isinstance(ok2, Appended)
        assert isinstance(other, Appended)
        assert [ok0.message.seq, ok2.message.seq, other.message.seq] == [1, 2, 1]
        assert await store.read("lobby") == [ok0.message, ok2.message]
        assert await store.last_seq("bad") == 1
        assert await store.rooms() == [
            RoomCount("bad", 1),
            RoomCount("lobby", 2),
            RoomCount("other", 1),
        ]
        assert count_rows(path, "dedup", "key = 'bad'") == 0

        query(path, "DROP TRIGGER fail")
        retried = await append(store, "bad", key="bad")
        assert (retried.message.seq, retried.duplicate) == (2, False)
    finally:
        await store.aclose()


async def test_a_failure_that_ends_the_groups_transaction_fails_only_its_append(
    tmp_path: Path,
) -> None:
    path = tmp_path / "history.db"
    store = await open_sqlite(path)
    try:
        kept = await append(store)
        # RAISE(ROLLBACK) ends the whole transaction, as SQLite does itself for a full disk:
        # the group is rolled back and each append stored again on its own.
        query(
            path,
            "CREATE TRIGGER full BEFORE INSERT ON messages WHEN NEW.text = 'in bad'"
            " BEGIN SELECT RAISE(ROLLBACK, 'database or disk is full'); END",
        )
        calls = [append(store, key="k1"), append(store, "bad", key="k2"), append(store)]
        first, failed, last = await in_one_group(store, calls)
        assert isinstance(failed, StoreError)
        assert "database or disk is full" in str(failed)
        assert isinstance(first, Appended)
        assert isinstance(last, Appended)
        assert [first.message.seq, last.message.seq] == [2, 3]
        assert await store.read("lobby") == [kept.message, first.message, last.message]
        assert await store.rooms() == [RoomCount("lobby", 3)]
        assert count_rows(path, "dedup", "key = 'k2'") == 0
        assert await store.last_seq("bad") == 0

        query(path, "DROP TRIGGER full")
        assert (await append(store, "bad", key="k2")).message.seq == 1
    finally:
        await store.aclose()


async def test_a_value_sqlite_cannot_take_fails_only_its_append(tmp_path: Path) -> None:
    # A lone surrogate (the core refuses it; here it reaches the store directly) fails as the
    # rows are written, with UnicodeEncodeError rather than a SQLite error, after the group
    # has numbered its other rooms: none of that may outlive the rollback.
    path = tmp_path / "history.db"
    store = await open_sqlite(path)
    try:
        calls = [
            append(store, "x"),
            store.append(
                id="bad", room="bad", sender="ann", text="\udcff", sent_at=datetime.now(UTC)
            ),
            append(store, key="k"),
        ]
        x, failed, lobby = await in_one_group(store, calls)
        assert isinstance(failed, StoreError)
        assert "encode" in str(failed)
        assert isinstance(x, Appended)
        assert isinstance(lobby, Appended)
        assert (x.message.seq, lobby.message.seq) == (1, 1)
        for _ in range(2):  # a group of one, failing after it numbered #x: twice the same
            with pytest.raises(StoreError):
                await store.append(
                    id="bad", room="x", sender="ann", text="ok", sent_at=datetime.now(UTC),
                    reply_to="\udcff",
                )  # fmt: skip
        assert (await append(store, "x")).message.seq == 2
        assert (await append(store, "bad")).message.seq == 1
        assert await store.rooms() == [
            RoomCount("bad", 1),
            RoomCount("lobby", 1),
            RoomCount("x", 2),
        ]
        assert query(path, "SELECT room, last_seq, messages FROM rooms ORDER BY room") == [
            ("bad", 1, 1),
            ("lobby", 1, 1),
            ("x", 2, 2),
        ]
    finally:
        await store.aclose()


async def test_a_group_that_cannot_take_the_write_lock_fails_and_stores_nothing(
    tmp_path: Path,
) -> None:
    path = tmp_path / "history.db"
    store = await open_sqlite(path)
    other = sqlite3.connect(path, isolation_level=None)
    try:
        await store._run(partial(store._db._conn.execute, "PRAGMA busy_timeout = 50"))
        other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        results = await in_one_group(store, [append(store, key=f"k{i}") for i in range(3)])
        assert [type(r) for r in results] == [StoreError] * 3
        assert all("locked" in str(r) for r in results)
        other.execute("ROLLBACK")
        assert (await append(store, key="k0")).message.seq == 1
        assert count_rows(path, "messages") == 1
    finally:
        other.close()
        await store.aclose()


async def test_a_read_sees_every_append_called_before_it(tmp_path: Path) -> None:
    store = await open_sqlite(tmp_path / "history.db")
    try:
        calls: list[Awaitable[object]] = [append(store) for _ in range(10)]
        calls += [store.read("lobby", limit=100), store.last_seq("lobby")]
        outcomes = await in_one_group(store, calls)
        page, last = outcomes[-2:]
        assert isinstance(page, list)
        assert [m.seq for m in page] == list(range(1, 11))
        assert last == 10
    finally:
        await store.aclose()


async def test_a_cancelled_append_is_still_stored(tmp_path: Path) -> None:
    store = await open_sqlite(tmp_path / "history.db")
    try:
        release = hold_the_thread(store)
        task = asyncio.create_task(append(store))
        await asyncio.sleep(0)
        task.cancel()
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert (await append(store)).message.seq == 2
        assert [m.seq for m in await store.read("lobby")] == [1, 2]
    finally:
        await store.aclose()


# -- listing rooms ----------------------------------------------------------------------------


async def steps_of(store: SqliteStore, call: Callable[[], Awaitable[object]]) -> int:
    """How many SQLite virtual machine steps `call` takes on the store's connection."""
    conn = store._db._conn
    steps = 0

    def step() -> int:
        nonlocal steps
        steps += 1
        return 0

    await store._run(partial(conn.set_progress_handler, step, 1))
    try:
        await call()
    finally:
        await store._run(partial(conn.set_progress_handler, None, 1))
    return steps


async def test_listing_rooms_reads_no_messages(tmp_path: Path) -> None:
    store = await open_sqlite(tmp_path / "history.db")
    try:
        for room in "abcdefgh":
            await append(store, room)
        small = await steps_of(store, partial(store.rooms, after="b", limit=3))
        for _ in range(3000):
            await append(store, "d")
        for i in range(300):  # rooms whose only message expired, deleted by the job
            await append(store, f"c-{i:03}", at=datetime.now(UTC) - timedelta(days=60))
        await store.maintain()
        large = await steps_of(store, partial(store.rooms, after="b", limit=3))
        assert await store.rooms(after="b", limit=3) == [
            RoomCount("c", 1),
            RoomCount("d", 3001),
            RoomCount("e", 1),
        ]
        assert large < 2 * small
    finally:
        await store.aclose()


# -- schema 1 (before rooms kept their counts) ------------------------------------------------

SCHEMA_1 = (  # exactly as grpcchat wrote it
    "CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE rooms (room TEXT PRIMARY KEY, last_seq INTEGER NOT NULL) WITHOUT ROWID",
    """CREATE TABLE messages (
        room TEXT NOT NULL,
        seq INTEGER NOT NULL,
        id TEXT NOT NULL,
        sender TEXT NOT NULL,
        text TEXT NOT NULL,
        sent_at_us INTEGER NOT NULL,
        action INTEGER NOT NULL,
        PRIMARY KEY (room, seq)
    ) WITHOUT ROWID""",
    "CREATE INDEX messages_by_time ON messages (sent_at_us)",
    """CREATE TABLE dedup (
        sender TEXT NOT NULL,
        key TEXT NOT NULL,
        room TEXT NOT NULL,
        seq INTEGER NOT NULL,
        id TEXT NOT NULL,
        text TEXT NOT NULL,
        sent_at_us INTEGER NOT NULL,
        action INTEGER NOT NULL,
        PRIMARY KEY (sender, key)
    ) WITHOUT ROWID""",
    "CREATE INDEX dedup_by_time ON dedup (sent_at_us)",
)


def schema_1_history(path: Path, epoch: str, sent_at_us: int) -> None:
    """A file as schema 1 left it: rooms a (3 messages, one keyed), b (seq 7, 2 kept) and
    gone (seq 4, every message pruned)."""
    conn = sqlite3.connect(path)
    with conn:
        for statement in SCHEMA_1:
            conn.execute(statement)
        conn.executemany(
            "INSERT INTO meta VALUES (?, ?)", [("epoch", epoch), ("schema_version", "1")]
        )
        conn.executemany("INSERT INTO rooms VALUES (?, ?)", [("a", 3), ("b", 7), ("gone", 4)])
        conn.executemany(
            "INSERT INTO messages VALUES (?, ?, ?, 'ann', ?, ?, 0)",
            [
                (room, seq, f"{room}{seq}", f"text {room}{seq}", sent_at_us + seq)
                for room, seqs in [("a", (1, 2, 3)), ("b", (6, 7))]
                for seq in seqs
            ],
        )
        conn.execute(
            "INSERT INTO dedup VALUES ('ann', 'k', 'a', 2, 'a2', 'text a2', ?, 0)",
            (sent_at_us + 2,),
        )
    conn.close()


def normalized_schema(path: Path) -> list[tuple[object, ...]]:
    rows = query(path, "SELECT type, name, sql FROM sqlite_master ORDER BY type, name")
    return [(kind, name, " ".join(str(sql).split())) for kind, name, sql in rows]


async def test_a_schema_1_history_is_upgraded_keeping_its_history_and_epoch(
    tmp_path: Path,
) -> None:
    path = tmp_path / "history.db"
    sent_at = datetime.now(UTC).replace(microsecond=0)
    schema_1_history(path, "e" * 32, sqlite_database.to_us(sent_at))

    store = await open_sqlite(path)
    try:
        assert store.epoch == "e" * 32
        assert [(m.id, m.seq, m.text) for m in await store.read("b")] == [
            ("b6", 6, "text b6"),
            ("b7", 7, "text b7"),
        ]
        assert (await store.read("a"))[1].sent_at == sent_at + timedelta(microseconds=2)
        assert await store.rooms() == [RoomCount("a", 3), RoomCount("b", 2)]
        assert query(path, "SELECT value FROM meta WHERE name = 'schema_version'") == [("3",)]
        assert query(path, "SELECT room, messages FROM rooms ORDER BY room") == [
            ("a", 3),
            ("b", 2),
            ("gone", 0),
        ]
        repeat = await append(store, "a", key="k")
        assert (repeat.duplicate, repeat.message.id) == (True, "a2")
        assert (await append(store, "gone")).message.seq == 5
        assert await store.rooms() == [RoomCount("a", 3), RoomCount("b", 2), RoomCount("gone", 1)]
    finally:
        await store.aclose()

    # Upgraded once: it now opens as any file of the current schema, with the schema a new
    # file has.
    store = await open_sqlite(path)
    try:
        assert store.epoch == "e" * 32
        assert await store.rooms() == [RoomCount("a", 3), RoomCount("b", 2), RoomCount("gone", 1)]
    finally:
        await store.aclose()
    await (await open_sqlite(tmp_path / "new.db")).aclose()
    assert normalized_schema(path) == normalized_schema(tmp_path / "new.db")


async def test_a_closed_store_refuses_calls_and_leaves_no_task(tmp_path: Path) -> None:
    def jobs() -> list[str]:
        return [name for t in asyncio.all_tasks() if "maintenance" in (name := t.get_name())]

    store = await open_store(url(tmp_path / "history.db"))
    assert len(jobs()) == 1
    await store.aclose()
    await store.aclose()
    assert jobs() == []
    with pytest.raises(StoreError, match="closed"):
        await append(store)
    with pytest.raises(StoreError, match="closed"):
        await store.rooms(limit=0)


async def test_a_cancelled_close_still_closes(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    store = await open_sqlite(path)
    await append(store)
    assert path.with_name("history.db-wal").exists()
    closing = asyncio.ensure_future(store.aclose())
    await asyncio.sleep(0)  # it is waiting for the maintenance job to stop
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing
    await asyncio.wait_for(store.aclose(), 10)  # waits for the same closing to finish
    assert store._executor._shutdown
    assert not path.with_name("history.db-wal").exists()  # the last connection closed


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


async def test_a_group_of_acknowledged_appends_survives_the_process_dying(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    script = f"""
import asyncio, os
from datetime import UTC, datetime
from grpcchat.server.engines import open_store

async def main():
    store = await open_store({url(path)!r})
    half = asyncio.Event()
    async def one(i):
        now = datetime.now(UTC)
        await store.append(id=str(i), room="lobby", sender="ann", text="hi", sent_at=now)
        print(i, flush=True)  # acknowledged
        if i == 999:
            half.set()
    tasks = [asyncio.create_task(one(i)) for i in range(2000)]
    await half.wait()
    os._exit(0)  # mid-stream: groups in flight, no aclose, no checkpoint

asyncio.run(main())
"""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, cwd=REPO_ROOT, stdout=asyncio.subprocess.PIPE
    )
    output, _ = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0
    acknowledged = {int(line) for line in output.split()}
    assert len(acknowledged) >= 1000
    store = await open_store(url(path))
    try:
        stored = await store.read("lobby", limit=5000)
        assert {int(m.id) for m in stored} >= acknowledged
        # Stored in call order: ids follow seqs, with no gap.
        assert [int(m.id) for m in stored] == list(range(len(stored)))
        assert [m.seq for m in stored] == list(range(1, len(stored) + 1))
    finally:
        await store.aclose()
