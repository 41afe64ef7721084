"""History in one SQLite file: the embedded default, kept across restarts.

Every statement runs on one dedicated thread that owns the connection (`_Database`), so the
event loop never waits on the disk and statements never interleave; `SqliteStore` only hands
calls to that thread. Times are stored as integer microseconds since the Unix epoch, UTC, so
they sort and compare in SQL and come back exactly as appended.

Retention: messages beyond the count limit are deleted in the same transaction that appends
the one pushing them out; expired ones, and expired dedup keys, are deleted at open and then at
most once a minute, after an append. Until then `read` and `rooms` skip anything expired, so
what callers see never depends on when the deletion last ran.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import TypeVar

from grpcchat.core.errors import StoreError
from grpcchat.core.history import Appended, Retention
from grpcchat.core.models import Message

T = TypeVar("T")

SCHEMA_VERSION = 1
_SCHEMA = (
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
_TABLES = frozenset({"meta", "rooms", "messages", "dedup"})
# How often (at most) expired rows are deleted; in between, queries skip them.
MAINTENANCE_INTERVAL = 60.0
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
        self.epoch = self._existing_epoch() or self._create_schema()
        self._maintain(_now_us())
        self._maintained_at = time.monotonic()

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
            for statement in _SCHEMA:
                self._conn.execute(statement)
            epoch = uuid.uuid4().hex
            self._conn.executemany(
                "INSERT INTO meta (name, value) VALUES (?, ?)",
                [("epoch", epoch), ("schema_version", str(SCHEMA_VERSION))],
            )
            return epoch

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
                "INSERT INTO rooms (room, last_seq) VALUES (?, ?)"
                " ON CONFLICT (room) DO UPDATE SET last_seq = excluded.last_seq",
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
                self._conn.execute(
                    "DELETE FROM messages WHERE room = ? AND seq <= ?",
                    (room, seq - self._max_messages),
                )
        if time.monotonic() - self._maintained_at >= MAINTENANCE_INTERVAL:
            self._maintain(sent_at_us)
            self._maintained_at = time.monotonic()
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

    def rooms(self) -> dict[str, int]:
        rows = self._conn.execute(
            "SELECT room, COUNT(*) FROM messages WHERE sent_at_us >= ? GROUP BY room",
            (self._oldest_kept_us(),),
        )
        return dict(rows.fetchall())

    def close(self) -> None:
        self._conn.close()

    def _oldest_kept_us(self) -> int:
        return _now_us() - self._max_age_us

    def _maintain(self, now_us: int) -> None:
        """Delete expired messages, and dedup keys too old to match an append made at `now_us`
        (the appends' own clock, the one keys are judged by)."""
        with self._transaction():
            self._conn.execute(
                "DELETE FROM messages WHERE sent_at_us < ?", (self._oldest_kept_us(),)
            )
            self._conn.execute(
                "DELETE FROM dedup WHERE sent_at_us <= ?", (now_us - self._dedup_window_us,)
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

    @classmethod
    async def open(cls, path: str, retention: Retention) -> SqliteStore:
        """Open (creating it and its directories if missing) the history file at `path`.

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

    async def rooms(self) -> dict[str, int]:
        return await self._run(self._db.rooms)

    async def aclose(self) -> None:
        """Finish the calls already handed to the thread, close the file, end the thread."""
        if self._closed:
            return
        self._closed = True
        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._db.close)
        finally:
            self._executor.shutdown(wait=False)

    async def _run(self, call: Callable[[], T]) -> T:
        if self._closed:
            raise StoreError(f"the history store {self._db.path} is closed")
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, call)
        except (sqlite3.IntegrityError, sqlite3.ProgrammingError):
            raise  # a bug here, not a problem with the file
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"the history file {self._db.path} failed: {exc}") from exc
