"""The SQLite history file itself: its schema, the migrations between versions, the checks that
refuse a file that is not a healthy grpcchat history, and the one transaction discipline every
write uses. `sqlite.py` is the engine built on it."""

from __future__ import annotations

import errno
import fcntl
import os
import sqlite3
import uuid
from pathlib import Path

from grpcchat.core.errors import StoreError

SCHEMA_VERSION = 3
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
    3: (
        # Conversations. A relation entry (kind: edit, delete, react, unreact; '' for a
        # message) names its target's id; a message carries its current state: edited_at_us
        # (NULL: never edited), how many edits it took, deleted.
        "ALTER TABLE messages ADD COLUMN reply_to TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE messages ADD COLUMN kind TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE messages ADD COLUMN target TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE messages ADD COLUMN emoji TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE messages ADD COLUMN edited_at_us INTEGER",
        "ALTER TABLE messages ADD COLUMN edits INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE messages ADD COLUMN deleted INTEGER NOT NULL DEFAULT 0",
        # A relation finds its target by id; a delete finds the target's edits.
        "CREATE INDEX messages_by_id ON messages (id)",
        "CREATE INDEX messages_by_target ON messages (target, kind) WHERE kind != ''",
        # What `unread` counts, and only that: a count is a range of this index.
        "CREATE INDEX messages_unread ON messages (room, seq, sender, sent_at_us)"
        " WHERE kind = '' AND deleted = 0",
        # A repeated key returns its original as `messages` holds it now; the copy here only
        # once the original is pruned, so a delete erases its text here too and marks it.
        "ALTER TABLE dedup ADD COLUMN reply_to TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE dedup ADD COLUMN kind TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE dedup ADD COLUMN target TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE dedup ADD COLUMN emoji TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE dedup ADD COLUMN deleted INTEGER NOT NULL DEFAULT 0",
        # One row per name and emoji on a message (by its seq): clustered in display order,
        # emoji by the seq of their first use (while they stay on it), names by when they
        # reacted; a page's reactions are one range, and a pruned message's too.
        """CREATE TABLE reactions (
            room TEXT NOT NULL,
            target_seq INTEGER NOT NULL,
            emoji_seq INTEGER NOT NULL,
            seq INTEGER NOT NULL,
            emoji TEXT NOT NULL,
            name TEXT NOT NULL,
            PRIMARY KEY (room, target_seq, emoji_seq, seq)
        ) WITHOUT ROWID""",
        "CREATE UNIQUE INDEX reactions_by_name ON reactions (room, target_seq, emoji, name)",
        # A marker outlives the messages it is past, but not `max_age` after its last move
        # (moved_at_us), and at most `max_markers` of them, the least recently moved go
        # first: both pruned by the maintenance job, along the time index.
        """CREATE TABLE read_markers (
            name TEXT NOT NULL,
            room TEXT NOT NULL,
            seq INTEGER NOT NULL,
            moved_at_us INTEGER NOT NULL,
            PRIMARY KEY (name, room)
        ) WITHOUT ROWID""",
        "CREATE INDEX read_markers_by_time ON read_markers (moved_at_us)",
    ),
}
_TABLES = frozenset({"meta", "rooms", "messages", "dedup"})


def unusable(path: Path, why: str) -> StoreError:
    return StoreError(
        f"cannot use the history file {path}: {why}. Move it away (a new, empty history will "
        "start there), choose another path, or use --store memory://"
    )


def no_directory(path: Path, exc: OSError) -> StoreError:
    """The file's directory cannot be made: a file in the way is the user's to move; anything
    else (a missing or read-only parent) leaves nothing to move, only another path."""
    why = f"cannot create its directory {path.parent} ({exc.strerror})"
    if exc.errno in (errno.ENOTDIR, errno.EEXIST):
        return unusable(path, f"{why}: a file is in the way of it")
    return StoreError(
        f"cannot use the history file {path}: {why}. Choose another --data-dir or path, or use "
        "--store memory://"
    )


def open_failure(path: Path, exc: sqlite3.Error) -> StoreError:
    """Why the file could not be opened or checked, worded so that nobody moves a healthy
    history away: a lock another program holds, or a directory SQLite cannot write its -wal
    and -shm files into, is no reason to."""
    code = (getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF  # the primary code
    if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
        return StoreError(
            f"cannot use the history file {path}: another program holds it locked; stop it, "
            "or choose another path"
        )
    if path.exists() and not os.access(path.parent, os.W_OK):
        return StoreError(
            f"cannot use the history file {path}: its directory {path.parent} is not "
            "writable (SQLite keeps its -wal and -shm files beside it)"
        )
    if code in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB) or "file format" in str(exc):
        return unusable(path, f"it is not a readable SQLite database ({exc})")
    # Anything else says nothing about the file itself (a full disk, an I/O error, a file
    # this user may not write): moving a healthy history away is not the cure.
    return StoreError(f"cannot use the history file {path}: {_trouble(path, code, exc)}")


def _trouble(path: Path, code: int, exc: sqlite3.Error) -> str:
    if code == sqlite3.SQLITE_FULL:
        return f"the disk is full ({exc}): free some space"
    if code == sqlite3.SQLITE_IOERR:
        return f"reading or writing it failed ({exc}): check the disk"
    if not path.exists():
        return (
            f"cannot create it ({exc}): check that this user may write in {path.parent}, or "
            "choose another path"
        )
    if code == sqlite3.SQLITE_READONLY and os.access(path, os.W_OK):
        return (
            f"it opens read-only ({exc}): check that this user may write {path.name}-wal and "
            f"{path.name}-shm beside it (left by another user?), or choose another path"
        )
    if code == sqlite3.SQLITE_READONLY or not os.access(path, os.R_OK | os.W_OK):
        return _no_access(exc)
    return f"{exc}: check the file, its directory and the disk"


def _no_access(why: object) -> str:
    return f"this user may not read and write it ({why}): give it access, or choose another path"


def hold(path: Path) -> int | None:
    """An exclusive lock on the history file (SQLite has opened it), held by the returned file
    descriptor until `release`: two servers on one file would each deliver only their own
    appends live. A BSD lock (flock), which SQLite's own locks (fcntl) never meet. A file this
    user may not write is refused here, before any statement runs: reading it would leave
    read-only -wal and -shm files beside it, which kept it refused once the file was fixed.
    None when the file cannot be opened for another reason: SQLite says why."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            message = f"cannot use the history file {path}: {_no_access(exc.strerror)}"
            raise StoreError(message) from None
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise StoreError(
            f"cannot use the history file {path}: another grpcchat serve uses it; stop that "
            "one, or give this one another --data-dir (or --store)"
        ) from None
    return fd


def release(held: int | None) -> None:
    if held is not None:
        os.close(held)


def check_is_history(conn: sqlite3.Connection, path: Path) -> bool:
    """Whether the file holds a history this version can use (False: it is empty); raises
    StoreError for anything else. Only reads."""
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    if not tables:
        return False
    if "meta" not in tables:
        raise unusable(path, "it is a SQLite database, but not a grpcchat history")
    if not tables >= _TABLES:
        raise unusable(path, f"tables are missing ({', '.join(sorted(_TABLES - tables))})")
    meta: dict[str, str] = dict(conn.execute("SELECT name, value FROM meta"))
    version = meta.get("schema_version", "")
    if not version.isdigit() or "epoch" not in meta:
        raise unusable(path, "its grpcchat metadata is missing or damaged")
    if int(version) > SCHEMA_VERSION:
        raise unusable(
            path,
            f"it was written by a newer grpcchat (history schema {version}; this version "
            f"reads {SCHEMA_VERSION}): upgrade grpcchat to keep it",
        )
    return True


def existing_epoch(conn: sqlite3.Connection, path: Path) -> str | None:
    if not check_is_history(conn, path):
        return None
    return str(conn.execute("SELECT value FROM meta WHERE name = 'epoch'").fetchone()[0])


def create_schema(conn: sqlite3.Connection, path: Path) -> str:
    """Create the tables of a new history and return its new epoch, or, if another process
    created them first, the epoch it chose."""
    with Transaction(conn):
        if epoch := existing_epoch(conn, path):
            return epoch
        for statement in _SCHEMA_1:
            conn.execute(statement)
        epoch = uuid.uuid4().hex
        conn.executemany(
            "INSERT INTO meta (name, value) VALUES (?, ?)",
            [("epoch", epoch), ("schema_version", "1")],
        )
        return epoch


def _schema_version(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT value FROM meta WHERE name = 'schema_version'")
    return int(row.fetchone()[0])


def migrate(conn: sqlite3.Connection) -> None:
    """Bring the file to SCHEMA_VERSION, one version per transaction, keeping its history and
    epoch. Another process may be migrating it too: each step re-reads the version under the
    write lock."""
    while _schema_version(conn) < SCHEMA_VERSION:
        with Transaction(conn):
            version = _schema_version(conn) + 1
            if version > SCHEMA_VERSION:
                return
            for statement in _MIGRATIONS[version]:
                conn.execute(statement)
            conn.execute("UPDATE meta SET value = ? WHERE name = 'schema_version'", (str(version),))


class Transaction:
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
