"""The statements of the SQLite history, on the one thread that owns the connection: open or
create the file (refusing anything that is not a healthy grpcchat history), append a group of
messages in one transaction, read, count rooms, prune. `SqliteStore` (sqlite.py) is the async
engine in front of it; every method here runs on its thread, never on the event loop."""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeAlias

from grpcchat.core.history import Appended, Retention, RoomCount
from grpcchat.core.models import Message
from grpcchat.store.sqlite_file import (
    Transaction,
    check_is_history,
    create_schema,
    existing_epoch,
    migrate,
    unreadable,
    unusable,
)

# Rows deleted per transaction by the maintenance job: appends wait at most for one batch.
MAINTENANCE_BATCH = 1_000
_UNIX_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_MAX_SEQ = 2**63 - 1  # SQLite's largest integer: an open bound

# One queued append: id, room, sender, text, sent_at_us, key, action.
AppendRequest: TypeAlias = tuple[str, str, str, str, int, str, bool]


def to_us(moment: datetime) -> int:
    if moment.tzinfo is None:
        raise ValueError("sent_at must be timezone-aware")
    return (moment - _UNIX_EPOCH) // _MICROSECOND


def _from_us(us: int) -> datetime:
    return _UNIX_EPOCH + timedelta(microseconds=us)


def _now_us() -> int:
    return to_us(datetime.now(UTC))


class Database:
    """The connection and every statement; lives on, and is only called from, one thread."""

    def __init__(self, conn: sqlite3.Connection, path: Path, retention: Retention) -> None:
        self._conn = conn
        self.path = path
        self._max_messages = retention.max_messages
        self._max_age_us = retention.max_age // _MICROSECOND
        self._dedup_window_us = retention.dedup_window // _MICROSECOND
        # The `sent_at` of the latest append: dedup keys are judged on the appends' clock.
        self._appended_at_us: int | None = None
        self.epoch = existing_epoch(conn, path) or create_schema(conn, path)
        migrate(conn)
        self._enforce_count_limit()

    @classmethod
    def open(cls, path: Path, retention: Retention) -> Database:
        """Open or create the file; refuse, with the reason, anything that is not a healthy
        grpcchat history, rather than start over with an empty one. A refused file is left
        exactly as it was: it is the user's to rescue."""
        if path.is_dir():
            raise unusable(path, "it is a directory")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            why = f"cannot create its directory {path.parent} ({exc.strerror})"
            raise unusable(path, why) from exc
        try:
            conn = sqlite3.connect(path, isolation_level=None)
        except sqlite3.Error as exc:
            raise unusable(path, unreadable(path, exc)) from exc
        try:
            conn.execute("PRAGMA busy_timeout = 5000")
            problems = [row[0] for row in conn.execute("PRAGMA quick_check")]
            if problems != ["ok"]:
                raise unusable(path, f"it is damaged ({problems[0]})")
            check_is_history(conn, path)  # before anything below writes to the file
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            return cls(conn, path, retention)
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise unusable(path, unreadable(path, exc)) from exc
        except BaseException:
            conn.close()
            raise

    def _enforce_count_limit(self) -> None:
        """Delete what lies beyond the count limit in every room: appends keep each room
        within it, but the limit may be lower than when the file was last written."""
        with self._transaction():
            over = self._conn.execute(
                "SELECT room, last_seq FROM rooms WHERE messages > ?", (self._max_messages,)
            ).fetchall()
            for room, last_seq in over:
                self._prune_by_count(room, last_seq)

    def _transaction(self) -> Transaction:
        return Transaction(self._conn)

    def append_group(self, requests: Sequence[AppendRequest]) -> list[Appended | sqlite3.Error]:
        """Store the requests in order in one transaction: the outcome of each, in order, once
        committed. If anything fails after the write lock is taken (one append's statement, a
        full disk, the commit), that transaction is rolled back and each request is stored
        again in a transaction of its own, so each ends exactly as it would have alone. Raises,
        storing nothing, if the write lock cannot be taken."""
        if len(requests) == 1:
            return [self._append_alone(requests[0])]
        began = False
        try:
            with self._transaction():
                began = True
                outcomes: list[Appended | sqlite3.Error] = [self._append(*r) for r in requests]
        except sqlite3.Error:
            if not began:
                raise
            return [self._append_alone(request) for request in requests]
        for outcome, request in zip(outcomes, requests, strict=True):
            self._appended(outcome, request)
        return outcomes

    def _append_alone(self, request: AppendRequest) -> Appended | sqlite3.Error:
        try:
            with self._transaction():
                appended = self._append(*request)
        except sqlite3.Error as exc:
            return exc
        self._appended(appended, request)
        return appended

    def _appended(self, outcome: Appended | sqlite3.Error, request: AppendRequest) -> None:
        """Note a committed append: dedup keys are judged on the appends' clock."""
        if isinstance(outcome, Appended) and not outcome.duplicate:
            self._appended_at_us = request[4]

    def _append(
        self,
        id: str,
        room: str,
        sender: str,
        text: str,
        sent_at_us: int,
        key: str,
        action: bool,
    ) -> Appended:
        """Store one message, or return the original of a repeated key (inside the caller's
        transaction)."""
        if key:
            original = self._conn.execute(
                "SELECT room, seq, id, text, sent_at_us, action FROM dedup"
                " WHERE sender = ? AND key = ? AND sent_at_us > ?",
                (sender, key, sent_at_us - self._dedup_window_us),
            ).fetchone()
            if original is not None:
                o_room, o_seq, o_id, o_text, o_sent_at_us, o_action = original
                message = self._message(o_room, o_seq, o_id, sender, o_text, o_sent_at_us, o_action)
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
