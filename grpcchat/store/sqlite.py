"""History in one SQLite file: the embedded default, kept across restarts.

Every statement runs on one dedicated thread that owns the connection (`_Database`), so the
event loop never waits on the disk and statements never interleave; `SqliteStore` only hands
calls to that thread. Times are stored as integer microseconds since the Unix epoch, UTC, so
they sort and compare in SQL and come back exactly as appended.

Each room's row in `rooms` carries how many messages it holds, changed in the same transaction
as every insert or delete of its messages, so a `rooms` page is a range of one small index.

Retention: messages beyond the count limit are deleted in the transaction that appends the one
pushing them out (a failure there rolls the whole append back). Expired messages, and expired
dedup keys, are deleted by the store's own job (`SqliteStore._maintain_forever`): at open, then
every MAINTENANCE_INTERVAL, in transactions of at most MAINTENANCE_BATCH rows so appends
interleave; a failed run is logged (grpcchat.store) and retried at the next interval. Until a
run, `read` and `rooms` skip or count out anything expired, so what callers see never depends
on when the deletion last ran.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import TypeVar

from grpcchat.core.errors import StoreError
from grpcchat.core.history import Appended, Retention, RoomCount
from grpcchat.core.models import Message

T = TypeVar("T")

log = logging.getLogger("grpcchat.store")

SCHEMA_VERSION = 2
# The tables as schema 1 made them; a new file is made the same way, then migrated like an old
# one, so every file of a version has exactly the same schema.
_SCHEMA_1 = (
    "CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
    # A room's last seq outlives its messages, so seqs are never reused after pruning.
    "CREATE TABLE rooms (room TEXT PRIMARY KEY, last_seq INTEGER NOT NULL) WITHOUT ROWID",
    # Clustered by (room, seq): a page is one contiguous range of the b-tree.
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
    # A copy of the original, not a reference: the original may be pruned while its key lives.
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
# The statements that bring a file from the version before each key to that version.
_MIGRATIONS = {
    2: (
        # How many messages each room holds, so listing rooms never counts rows.
        "ALTER TABLE rooms ADD COLUMN messages INTEGER NOT NULL DEFAULT 0",
        "UPDATE rooms SET messages ="
        " (SELECT COUNT(*) FROM messages AS held WHERE held.room = rooms.room)",
        # Rooms whose messages all expired keep their row (and last_seq) but leave this index.
        "CREATE INDEX rooms_holding_messages ON rooms (room, messages) WHERE messages > 0",
    ),
}
_TABLES = frozenset({"meta", "rooms", "messages", "dedup"})
# How often expired rows are deleted; in between, queries skip them.
MAINTENANCE_INTERVAL = 60.0
# Rows deleted per transaction by the maintenance job: appends wait at most for one batch.
MAINTENANCE_BATCH = 1_000
_UNIX_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_MAX_SEQ = 2**63 - 1  # SQLite's largest integer: an open bound


def _to_us(moment: datetime) -> int:
    if moment.tzinfo is None:
        raise ValueError("sent_at must be timezone-aware")
    return (moment - _UNIX_EPOCH) // _MICROSECOND


def _from_us(us: int) -> datetime:
    return _UNIX_EPOCH + timedelta(microseconds=us)


def _now_us() -> int:
    return _to_us(datetime.now(UTC))


def _unusable(path: Path, why: str) -> StoreError:
    return StoreError(
        f"cannot use the history file {path}: {why}. Move it away (a new, empty history will "
        "start there), choose another path, or use --store memory://"
    )


def _unreadable(path: Path, exc: sqlite3.Error) -> str:
    if not path.exists():
        return f"cannot create it ({exc})"
    if not os.access(path, os.R_OK | os.W_OK):
        return f"no permission to read and write it ({exc})"
    return f"it is not a readable SQLite database ({exc})"


def _check_is_history(conn: sqlite3.Connection, path: Path) -> bool:
    """Whether the file holds a history this version can use (False: it is empty); raises
    StoreError for anything else. Only reads."""
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    if not tables:
        return False
    if "meta" not in tables:
        raise _unusable(path, "it is a SQLite database, but not a grpcchat history")
    if not tables >= _TABLES:
        raise _unusable(path, f"tables are missing ({', '.join(sorted(_TABLES - tables))})")
    meta: dict[str, str] = dict(conn.execute("SELECT name, value FROM meta"))
    version = meta.get("schema_version", "")
    if not version.isdigit() or "epoch" not in meta:
        raise _unusable(path, "its grpcchat metadata is missing or damaged")
    if int(version) > SCHEMA_VERSION:
        raise _unusable(
            path,
            f"it was written by a newer grpcchat (history schema {version}; this version "
            f"reads {SCHEMA_VERSION}): upgrade grpcchat to keep it",
        )
    return True


class _Database:
    """The connection and every statement; lives on, and is only called from, one thread."""

    def __init__(self, conn: sqlite3.Connection, path: Path, retention: Retention) -> None:
        self._conn = conn
        self.path = path
        self._max_messages = retention.max_messages
        self._max_age_us = retention.max_age // _MICROSECOND
        self._dedup_window_us = retention.dedup_window // _MICROSECOND
        # The `sent_at` of the latest append: dedup keys are judged on the appends' clock.
        self._appended_at_us: int | None = None
        self.epoch = self._existing_epoch() or self._create_schema()
        self._migrate()
        self._enforce_count_limit()

    @classmethod
    def open(cls, path: Path, retention: Retention) -> _Database:
        """Open or create the file; refuse, with the reason, anything that is not a healthy
        grpcchat history, rather than start over with an empty one. A refused file is left
        exactly as it was: it is the user's to rescue."""
        if path.is_dir():
            raise _unusable(path, "it is a directory")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            why = f"cannot create its directory {path.parent} ({exc.strerror})"
            raise _unusable(path, why) from exc
        try:
            conn = sqlite3.connect(path, isolation_level=None)
        except sqlite3.Error as exc:
            raise _unusable(path, _unreadable(path, exc)) from exc
        try:
            conn.execute("PRAGMA busy_timeout = 5000")
            problems = [row[0] for row in conn.execute("PRAGMA quick_check")]
            if problems != ["ok"]:
                raise _unusable(path, f"it is damaged ({problems[0]})")
            _check_is_history(conn, path)  # before anything below writes to the file
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            return cls(conn, path, retention)
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise _unusable(path, _unreadable(path, exc)) from exc
        except BaseException:
            conn.close()
            raise

    def _existing_epoch(self) -> str | None:
        if not _check_is_history(self._conn, self.path):
            return None
        return str(self._conn.execute("SELECT value FROM meta WHERE name = 'epoch'").fetchone()[0])

    def _create_schema(self) -> str:
        """Create the tables of a new history and return its new epoch, or, if another process
        created them first, the epoch it chose."""
        with self._transaction():
            if epoch := self._existing_epoch():
                return epoch
            for statement in _SCHEMA_1:
                self._conn.execute(statement)
            epoch = uuid.uuid4().hex
            self._conn.executemany(
                "INSERT INTO meta (name, value) VALUES (?, ?)",
                [("epoch", epoch), ("schema_version", "1")],
            )
            return epoch

    def _schema_version(self) -> int:
        row = self._conn.execute("SELECT value FROM meta WHERE name = 'schema_version'")
        return int(row.fetchone()[0])

    def _migrate(self) -> None:
        """Bring the file to SCHEMA_VERSION, one version per transaction, keeping its history
        and epoch. Another process may be migrating it too: each step re-reads the version
        under the write lock."""
        while self._schema_version() < SCHEMA_VERSION:
            with self._transaction():
                version = self._schema_version() + 1
                if version > SCHEMA_VERSION:
                    return
                for statement in _MIGRATIONS[version]:
                    self._conn.execute(statement)
                self._conn.execute(
                    "UPDATE meta SET value = ? WHERE name = 'schema_version'", (str(version),)
                )

    def _enforce_count_limit(self) -> None:
        """Delete what lies beyond the count limit in every room: appends keep each room
        within it, but the limit may be lower than when the file was last written."""
        with self._transaction():
            over = self._conn.execute(
                "SELECT room, last_seq FROM rooms WHERE messages > ?", (self._max_messages,)
            ).fetchall()
            for room, last_seq in over:
                self._prune_by_count(room, last_seq)

    def _transaction(self) -> _Transaction:
        return _Transaction(self._conn)

    def append(
        self,
        id: str,
        room: str,
        sender: str,
        text: str,
        sent_at_us: int,
        key: str,
        action: bool,
    ) -> Appended:
        """Store one message, or return the original of a repeated key: all in one
        transaction, and nothing after its commit."""
        with self._transaction():
            if key:
                original = self._conn.execute(
                    "SELECT room, seq, id, text, sent_at_us, action FROM dedup"
                    " WHERE sender = ? AND key = ? AND sent_at_us > ?",
                    (sender, key, sent_at_us - self._dedup_window_us),
                ).fetchone()
                if original is not None:
                    o_room, o_seq, o_id, o_text, o_sent_at_us, o_action = original
                    message = self._message(
                        o_room, o_seq, o_id, sender, o_text, o_sent_at_us, o_action
                    )
                    return Appended(message, duplicate=True)
            row = self._conn.execute("SELECT last_seq FROM rooms WHERE room = ?", (room,))
            last = row.fetchone()
            seq = (last[0] if last else 0) + 1
            self._conn.execute(
                "INSERT INTO rooms (room, last_seq, messages) VALUES (?, ?, 1)"
                " ON CONFLICT (room) DO UPDATE"
                " SET last_seq = excluded.last_seq, messages = messages + 1",
                (room, seq),
            )
            self._conn.execute(
                "INSERT INTO messages (room, seq, id, sender, text, sent_at_us, action)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (room, seq, id, sender, text, sent_at_us, action),
            )
            if key:
                self._conn.execute(
                    "INSERT OR REPLACE INTO dedup"
                    " (sender, key, room, seq, id, text, sent_at_us, action)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (sender, key, room, seq, id, text, sent_at_us, action),
                )
            if seq > self._max_messages:
                self._prune_by_count(room, seq)
        self._appended_at_us = sent_at_us
        message = self._message(room, seq, id, sender, text, sent_at_us, action)
        return Appended(message, duplicate=False)

    def read(
        self, room: str, after: int | None, before: int | None, limit: int, newest_first: bool
    ) -> list[Message]:
        if limit <= 0:
            return []
        low = min(max(after, -_MAX_SEQ), _MAX_SEQ) if after is not None else 0
        high = max(min(before, _MAX_SEQ), -_MAX_SEQ) if before is not None else _MAX_SEQ
        # `+sent_at_us`: filter rows of the (room, seq) range, never scan the time index.
        rows = self._conn.execute(
            "SELECT seq, id, sender, text, sent_at_us, action FROM messages"
            " WHERE room = ? AND seq > ? AND seq < ? AND +sent_at_us >= ?"
            f" ORDER BY seq {'DESC' if newest_first else 'ASC'} LIMIT ?",
            (room, low, high, self._oldest_kept_us(), limit),
        )
        return [self._message(room, *row) for row in rows]

    def last_seq(self, room: str) -> int:
        row = self._conn.execute("SELECT last_seq FROM rooms WHERE room = ?", (room,)).fetchone()
        return int(row[0]) if row else 0

    def rooms(self, after: str, limit: int) -> list[RoomCount]:
        """Rooms after `after` by their stored counts (an index range), less their messages
        that expired but are not deleted yet (a range of the time index that the maintenance
        job keeps short). A room left with none is dropped and the page topped up."""
        page: list[RoomCount] = []
        oldest_kept_us = self._oldest_kept_us()
        while len(page) < limit:
            wanted = limit - len(page)
            rows: list[tuple[str, int]] = self._conn.execute(
                "SELECT room, messages FROM rooms INDEXED BY rooms_holding_messages"
                " WHERE room > ? AND messages > 0 ORDER BY room LIMIT ?",
                (after, wanted),
            ).fetchall()
            if not rows:
                break
            expired: dict[str, int] = dict(
                self._conn.execute(
                    "SELECT room, COUNT(*) FROM messages INDEXED BY messages_by_time"
                    " WHERE sent_at_us < ? AND room > ? AND room <= ? GROUP BY room",
                    (oldest_kept_us, after, rows[-1][0]),
                )
            )
            page += [
                RoomCount(room, held - gone)
                for room, held in rows
                if (gone := expired.get(room, 0)) < held
            ]
            if len(rows) < wanted:
                break
            after = rows[-1][0]
        return page

    def maintain(self) -> bool:
        """Delete up to MAINTENANCE_BATCH expired messages, and as many dedup keys too old to
        match an append made now or after the latest one; True if more may be left."""
        with self._transaction():
            gone = self._conn.execute(
                "SELECT room, seq FROM messages INDEXED BY messages_by_time"
                " WHERE sent_at_us < ? LIMIT ?",
                (self._oldest_kept_us(), MAINTENANCE_BATCH),
            ).fetchall()
            self._conn.executemany("DELETE FROM messages WHERE room = ? AND seq = ?", gone)
            self._conn.executemany(
                "UPDATE rooms SET messages = messages - ? WHERE room = ?",
                [(n, room) for room, n in Counter(room for room, _ in gone).items()],
            )
            now_us = _now_us()
            if self._appended_at_us is not None:
                now_us = min(now_us, self._appended_at_us)
            keys = self._conn.execute(
                "SELECT sender, key FROM dedup INDEXED BY dedup_by_time"
                " WHERE sent_at_us <= ? LIMIT ?",
                (now_us - self._dedup_window_us, MAINTENANCE_BATCH),
            ).fetchall()
            self._conn.executemany("DELETE FROM dedup WHERE sender = ? AND key = ?", keys)
        return MAINTENANCE_BATCH in (len(gone), len(keys))

    def close(self) -> None:
        self._conn.close()

    def _oldest_kept_us(self) -> int:
        return _now_us() - self._max_age_us

    def _prune_by_count(self, room: str, last_seq: int) -> None:
        """Delete the room's messages beyond the count limit (inside the caller's
        transaction), and take them off its count."""
        pruned = self._conn.execute(
            "DELETE FROM messages WHERE room = ? AND seq <= ?",
            (room, last_seq - self._max_messages),
        ).rowcount
        if pruned:
            self._conn.execute(
                "UPDATE rooms SET messages = messages - ? WHERE room = ?", (pruned, room)
            )

    def _message(
        self, room: str, seq: int, id: str, sender: str, text: str, sent_at_us: int, action: int
    ) -> Message:
        return Message(
            id=id,
            room=room,
            sender=sender,
            text=text,
            sent_at=_from_us(sent_at_us),
            seq=seq,
            epoch=self.epoch,
            action=bool(action),
        )


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any exception.

    IMMEDIATE takes the write lock up front, so another process on the same file waits (up to
    busy_timeout) instead of failing halfway through a read-then-write.
    """

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def __enter__(self) -> None:
        if self._conn.in_transaction:  # a ROLLBACK that failed last time: never build on it
            self._conn.execute("ROLLBACK")
        self._conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            try:
                self._conn.execute("COMMIT")
                return
            except BaseException:
                self._rollback()
                raise
        self._rollback()

    def _rollback(self) -> None:
        # SQLite has already rolled back after some errors (a full disk, for one).
        if self._conn.in_transaction:
            self._conn.execute("ROLLBACK")


class SqliteStore:
    """The `HistoryStore` contract on a SQLite file, worked by one dedicated thread."""

    def __init__(self, database: _Database, executor: ThreadPoolExecutor) -> None:
        self._db = database
        self._executor = executor
        self._closed = False
        self._maintenance = asyncio.get_running_loop().create_task(
            self._maintain_forever(), name=f"grpcchat-store-maintenance {database.path}"
        )

    @classmethod
    async def open(cls, path: str, retention: Retention) -> SqliteStore:
        """Open (creating it and its directories if missing) the history file at `path`, and
        start deleting what has expired in it.

        Raises StoreError, naming the file and what to do, if it cannot be used.
        """
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="grpcchat-sqlite")
        try:
            database = await asyncio.get_running_loop().run_in_executor(
                executor, _Database.open, Path(path), retention
            )
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(database, executor)

    @property
    def epoch(self) -> str:
        return self._db.epoch

    async def append(
        self,
        *,
        id: str,
        room: str,
        sender: str,
        text: str,
        sent_at: datetime,
        key: str = "",
        action: bool = False,
    ) -> Appended:
        sent_at_us = _to_us(sent_at)
        return await self._run(
            partial(self._db.append, id, room, sender, text, sent_at_us, key, action)
        )

    async def read(
        self,
        room: str,
        *,
        after: int | None = None,
        before: int | None = None,
        limit: int = 100,
        newest_first: bool = False,
    ) -> list[Message]:
        return await self._run(partial(self._db.read, room, after, before, limit, newest_first))

    async def last_seq(self, room: str) -> int:
        return await self._run(partial(self._db.last_seq, room))

    async def rooms(self, *, after: str = "", limit: int = 100) -> list[RoomCount]:
        if limit <= 0:
            return []
        return await self._run(partial(self._db.rooms, after, limit))

    async def maintain(self) -> None:
        """Delete everything expired now, a batch per transaction; raises StoreError if a
        batch fails (the batches before it stay done). The store's own job calls this at
        open and then every MAINTENANCE_INTERVAL."""
        while await self._run(self._db.maintain):
            pass

    async def aclose(self) -> None:
        """Stop the maintenance job, finish the calls already handed to the thread, close the
        file, end the thread."""
        if self._closed:
            return
        self._closed = True
        self._maintenance.cancel()
        await asyncio.wait([self._maintenance])
        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._db.close)
        finally:
            self._executor.shutdown(wait=False)

    async def _maintain_forever(self) -> None:
        """Run `maintain` now and every MAINTENANCE_INTERVAL; a failure is one warning line,
        and the next run tries again. Nothing here ever reaches an append."""
        while True:
            try:
                await self.maintain()
            except StoreError as exc:
                log.warning(
                    "deleting expired history failed (retrying in %gs): %s",
                    MAINTENANCE_INTERVAL,
                    exc,
                )
            except Exception:
                log.exception(
                    "deleting expired history failed (retrying in %gs)", MAINTENANCE_INTERVAL
                )
            await asyncio.sleep(MAINTENANCE_INTERVAL)

    async def _run(self, call: Callable[[], T]) -> T:
        """Run `call` on the store's thread; any failure of SQLite becomes StoreError."""
        if self._closed:
            raise StoreError(f"the history store {self._db.path} is closed")
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, call)
        except sqlite3.Error as exc:
            raise StoreError(f"the history file {self._db.path} failed: {exc}") from exc
