"""The statements of the SQLite history, on the one thread that owns the connection: open or
create the file (refusing anything that is not a healthy grpcchat history), append a group of
messages in one transaction (validating and applying relations there, in order), read, count
rooms, read markers, prune. `SqliteStore` (sqlite.py) is the async engine in front of it; every
method here runs on its thread, never on the event loop."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections import Counter
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import TypeAlias

from grpcchat.core import relations
from grpcchat.core.errors import ChatError, StoreError
from grpcchat.core.history import Appended, Retention, RoomCount
from grpcchat.core.models import Message, Relation, RelationKind
from grpcchat.store import sqlite_conversations as conversations
from grpcchat.store.sqlite_file import (
    Transaction,
    check_is_history,
    create_schema,
    existing_epoch,
    hold,
    migrate,
    no_directory,
    open_failure,
    release,
    unusable,
)
from grpcchat.store.sqlite_rows import COLUMNS, KEYED_COLUMNS, Row, message, now_us, to_us

__all__ = ["MAINTENANCE_BATCH", "AppendRequest", "Database", "to_us"]

# Rows deleted per transaction by the maintenance job: appends wait at most for one batch.
MAINTENANCE_BATCH = 1_000
_MICROSECOND = timedelta(microseconds=1)
_MAX_SEQ = 2**63 - 1  # SQLite's largest integer: an open bound

# How long a statement waits for another connection's lock (another program reading the file).
BUSY_TIMEOUT_MS = 5000
# One queued append: id, room, sender, text, sent_at_us, key, action, reply_to, relation.
AppendRequest: TypeAlias = tuple[str, str, str, str, int, str, bool, str, Relation | None]
_INSERT_MESSAGES = (
    "INSERT INTO messages"
    " (room, seq, id, sender, text, sent_at_us, action, reply_to, kind, target, emoji)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_KEYS = (
    "INSERT OR REPLACE INTO dedup"
    " (room, seq, id, sender, text, sent_at_us, action, reply_to, kind, target, emoji, key)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
# What became of one append: stored (or the original of its key), refused by the rules of
# relations (a ChatError: nothing of it is stored), or failed (any other exception: SQLite's
# own, or a value SQLite cannot take).
Outcome: TypeAlias = Appended | Exception


class Database:
    """The connection and every statement; lives on, and is only called from, one thread."""

    def __init__(self, conn: sqlite3.Connection, path: Path, retention: Retention) -> None:
        self._conn = conn
        self.path = path
        self._max_messages = retention.max_messages
        self._max_age_us = retention.max_age // _MICROSECOND
        self._dedup_window_us = retention.dedup_window // _MICROSECOND
        self._max_markers = retention.max_markers
        # The `sent_at` of the latest append: dedup keys are judged on the appends' clock.
        self._appended_at_us: int | None = None
        # When a marker last moved here: each move is dated after the one before, so the
        # least recently moved is always one marker, even within a microsecond.
        self._moved_at_us = 0
        # What the open transaction appended and has not written yet: rows of messages and of
        # dedup (see `_flush`), and rooms whose `rooms` row is behind, with their last seq and
        # how many messages they gained (see `_settle_room`).
        self._unwritten: list[Row] = []
        self._unwritten_keys: list[Row] = []
        self._unsettled: dict[str, tuple[int, int]] = {}
        # The (sender, key)s the open transaction's appends may repeat, with when each
        # remembered append was made: only these need the dedup table looked at.
        self._known_keys: dict[tuple[str, str], int] = {}
        # The lock that keeps other servers off the file while it is open (see `hold`).
        self._held: int | None = None
        self.epoch = existing_epoch(conn, path) or create_schema(conn, path)
        migrate(conn)
        self._enforce_count_limit()

    @classmethod
    def open(cls, path: Path, retention: Retention) -> Database:
        """Open or create the file; refuse, with the reason, anything that is not a healthy
        grpcchat history, rather than start over with an empty one. A refused file is left
        exactly as it was: it is the user's to rescue."""
        if path.is_dir():
            raise StoreError(
                f"cannot use the history file {path}: it is a directory; give the path of a file "
                f"(such as {path / 'history.db'}), or the directory as --data-dir"
            )
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise no_directory(path, exc) from exc
        try:
            conn = sqlite3.connect(path, isolation_level=None)  # creates the file if missing
        except sqlite3.Error as exc:
            raise open_failure(path, exc) from exc
        try:
            held = hold(path)
        except BaseException:
            conn.close()
            raise
        try:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            problems = [row[0] for row in conn.execute("PRAGMA quick_check")]
            if problems != ["ok"]:
                raise unusable(path, f"it is damaged ({problems[0]})")
            check_is_history(conn, path)  # before anything below writes to the file
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            # Copy the WAL back every 10,000 pages (40 MB at 4 KiB) instead of 1,000: the pages
            # every append rewrites (index ends, the room's row) are copied once a checkpoint,
            # so fewer checkpoints copy fewer pages (an append at the count limit: 54 -> 43 µs).
            # After a checkpoint the WAL file is cut back to that size if it grew past it.
            conn.execute("PRAGMA wal_autocheckpoint = 10000")
            conn.execute(f"PRAGMA journal_size_limit = {10_000 * 4096}")
            # A deleted message's text is zeroed in the pages it leaves, where that costs no
            # extra I/O, rather than lingering in free space.
            conn.execute("PRAGMA secure_delete = FAST")
            database = cls(conn, path, retention)
            # A file this user may only read opens (SQLite falls back to read-only), and every
            # append then failed while the server said SERVING: a write that changes nothing.
            conn.execute("UPDATE meta SET value = value WHERE name = 'epoch'")
        except sqlite3.DatabaseError as exc:
            conn.close()
            release(held)
            raise open_failure(path, exc) from exc
        except BaseException:
            conn.close()
            release(held)
            raise
        database._held = held
        return database

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

    def append_group(self, requests: Sequence[AppendRequest]) -> list[Outcome]:
        """Store the requests in order in one transaction: the outcome of each, in order, once
        committed. A relation refused by its rules (checked against everything stored before
        it, the group's earlier appends included) stores nothing and fails only its caller.
        If anything fails after the write lock is taken (one append's statement or values, a
        full disk, the commit), that transaction is rolled back and each request is stored
        again in a transaction of its own, so each ends exactly as it would have alone. Raises,
        storing nothing, if the write lock cannot be taken."""
        if len(requests) == 1:
            return [self._append_alone(requests[0])]
        began = False
        try:
            with self._transaction():
                began = True
                self._known_keys = self._remembered_keys(requests)
                outcomes: list[Outcome] = [self._append_or_refuse(r) for r in requests]
                self._write_all()
        except Exception:
            self._forget_unwritten()  # whatever failed: nothing of it may reach the next one
            if not began:
                raise
            return [self._append_alone(request) for request in requests]
        for outcome, request in zip(outcomes, requests, strict=True):
            self._appended(outcome, request)
        self._erase_after_deletes(outcomes, requests)
        return outcomes

    def _append_alone(self, request: AppendRequest) -> Outcome:
        try:
            with self._transaction():
                self._known_keys = self._remembered_keys([request])
                outcome = self._append_or_refuse(request)
                self._write_all()
        except Exception as exc:
            self._forget_unwritten()
            return exc
        self._appended(outcome, request)
        self._erase_after_deletes([outcome], [request])
        return outcome

    def _erase_after_deletes(
        self, outcomes: Sequence[Outcome], requests: Sequence[AppendRequest]
    ) -> None:
        """After a committed delete: the text it erased from the tables is still in the WAL,
        in the pages as they were, until a checkpoint copies the pages back and the WAL is cut
        to nothing. Deletes are rare, so each group with one checkpoints at once (else the
        text stays on disk for up to 40 MB of appends)."""
        for outcome, request in zip(outcomes, requests, strict=True):
            relation = request[8]
            deleted = relation is not None and relation.kind is RelationKind.DELETE
            if deleted and isinstance(outcome, Appended) and not outcome.duplicate:
                # The group is committed whatever happens here: a checkpoint that cannot run
                # now (the disk full, say) leaves the text to the next one, and no append may
                # be reported failed for it.
                # Nor may it wait for a reader (another program's): the busy handler would hold
                # every append behind it for up to busy_timeout.
                with contextlib.suppress(sqlite3.Error):
                    self._conn.execute("PRAGMA busy_timeout = 0")
                    self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                self._conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
                return

    def _append_or_refuse(self, request: AppendRequest) -> Appended | ChatError:
        """`_append`, or why the rules of relations refuse it: every check comes before the
        first write, so a refused append has written nothing."""
        try:
            return self._append(*request)
        except ChatError as exc:
            return exc

    def _appended(self, outcome: Outcome, request: AppendRequest) -> None:
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
        reply_to: str,
        relation: Relation | None,
    ) -> Appended:
        """Store one entry, or return the original of a repeated key (inside the caller's
        transaction). A relation is checked against its target as stored now, then applied
        to it; ChatError, before anything is written, if it may not be."""
        oldest_kept_us = self._oldest_kept_us()
        remembered_us = self._known_keys.get((sender, key)) if key else None
        if remembered_us is not None and remembered_us > sent_at_us - self._dedup_window_us:
            self._flush()
            original = self._conn.execute(
                f"SELECT room, {KEYED_COLUMNS} FROM dedup"
                " WHERE sender = ? AND key = ? AND sent_at_us > ?",
                (sender, key, sent_at_us - self._dedup_window_us),
            ).fetchone()
            if original is not None:
                # As it is now, if retained; else as the key remembers it.
                kept_room, kept = original[0], original[1:]
                now = self._find(kept_room, kept[1], oldest_kept_us)
                repeated = now[0] if now else message(kept_room, self.epoch, kept)
                return Appended(repeated, duplicate=True)
        if reply_to:
            found = self._find(room, reply_to, oldest_kept_us)
            relations.check_target(found[0] if found else None, room, reply_to, kind=None)
        target: Message | None = None
        if relation is not None:
            found = self._find(room, relation.target, oldest_kept_us)
            target = relations.check_target(
                found[0] if found else None, room, relation.target, kind=relation.kind
            )
            relations.check_relation(target, sender, relation, found[1] if found else 0)
        unsettled = self._unsettled.get(room)
        seq = (unsettled[0] if unsettled else self.last_seq(room)) + 1
        self._unsettled[room] = (seq, unsettled[1] + 1 if unsettled else 1)
        kind, target_id, emoji = _relation_columns(relation)
        # In COLUMNS order (with no state yet); the tables take the room first.
        row = (seq, id, sender, text, sent_at_us, action, reply_to, kind, target_id, emoji)
        self._unwritten.append((room, *row))
        if key:
            self._unwritten_keys.append((room, *row, key))
            self._known_keys[sender, key] = sent_at_us
        stored = message(room, self.epoch, (*row, None, 0))
        if target is not None:
            self._flush()
            conversations.apply(self._conn, target, stored)
        return Appended(stored, duplicate=False)

    def _remembered_keys(self, requests: Sequence[AppendRequest]) -> dict[tuple[str, str], int]:
        """The keys of `requests` that dedup remembers, with when each was appended: one
        statement a group instead of a lookup an append."""
        keyed = [(sender, key) for _, _, sender, _, _, key, *_ in requests if key]
        if not keyed:
            return {}
        rows = self._conn.execute(
            "SELECT d.sender, d.key, d.sent_at_us FROM json_each(?) AS wanted JOIN dedup AS d"
            " ON d.sender = json_extract(wanted.value, '$[0]')"
            " AND d.key = json_extract(wanted.value, '$[1]')",
            (json.dumps(keyed, ensure_ascii=False),),
        ).fetchall()
        return {(sender, key): sent_at_us for sender, key, sent_at_us in rows}

    def _flush(self) -> None:
        """Write the rows appended so far (one statement a table): whatever reads or changes
        the tables comes after."""
        if self._unwritten:
            self._conn.executemany(_INSERT_MESSAGES, self._unwritten)
            self._unwritten.clear()
        if self._unwritten_keys:
            self._conn.executemany(_INSERT_KEYS, self._unwritten_keys)
            self._unwritten_keys.clear()

    def _write_all(self) -> None:
        self._flush()
        for room in list(self._unsettled):
            self._settle_room(room)

    def _forget_unwritten(self) -> None:
        """After a rollback: nothing of the transaction is to be written."""
        self._unwritten.clear()
        self._unwritten_keys.clear()
        self._unsettled.clear()
        self._known_keys = {}

    def _find(self, room: str, id: str, oldest_kept_us: int) -> tuple[Message, int] | None:
        """`conversations.find`, with the room's appends so far settled: what they push out
        beyond the count limit must be gone, as it would be had each been stored alone."""
        self._flush()
        self._settle_room(room)
        return conversations.find(self._conn, room, id, oldest_kept_us, self.epoch)

    def _settle_room(self, room: str) -> None:
        """Write the room's row for the appends made to it since it was last settled, and
        delete what they pushed beyond the count limit: once a room, not once a message (at the
        limit, as a busy room always is, each append would otherwise delete one message)."""
        if (unsettled := self._unsettled.pop(room, None)) is None:
            return
        self._flush()
        last_seq, appended = unsettled
        self._conn.execute(
            "INSERT INTO rooms (room, last_seq, messages) VALUES (?, ?, ?)"
            " ON CONFLICT (room) DO UPDATE"
            " SET last_seq = excluded.last_seq, messages = messages + excluded.messages",
            (room, last_seq, appended),
        )
        if last_seq > self._max_messages:
            self._prune_by_count(room, last_seq)

    def read(
        self, room: str, after: int | None, before: int | None, limit: int, newest_first: bool
    ) -> list[Message]:
        if limit <= 0:
            return []
        low = min(max(after, -_MAX_SEQ), _MAX_SEQ) if after is not None else 0
        high = max(min(before, _MAX_SEQ), -_MAX_SEQ) if before is not None else _MAX_SEQ
        # `+sent_at_us`: filter rows of the (room, seq) range, never scan the time index.
        rows = self._conn.execute(
            f"SELECT {COLUMNS} FROM messages"
            " WHERE room = ? AND seq > ? AND seq < ? AND +sent_at_us >= ?"
            f" ORDER BY seq {'DESC' if newest_first else 'ASC'} LIMIT ?",
            (room, low, high, self._oldest_kept_us(), limit),
        ).fetchall()
        if not rows:
            return []
        seqs = (rows[0][0], rows[-1][0])
        reactions = conversations.reactions_between(self._conn, room, min(seqs), max(seqs))
        return [message(room, self.epoch, row, reactions.get(row[0], ())) for row in rows]

    def mark_read(self, name: str, room: str, seq: int) -> int:
        marker = self.read_marker(name, room)
        if seq <= marker:
            return marker
        with self._transaction():  # the room's last seq and the marker, read under the lock
            moved = min(seq, self.last_seq(room))
            marker = self.read_marker(name, room)
            if moved <= marker:
                return marker
            self._moved_at_us = max(now_us(), self._moved_at_us + 1)
            conversations.move_marker(self._conn, name, room, moved, self._moved_at_us)
            return moved

    def read_marker(self, name: str, room: str) -> int:
        return conversations.read_marker(self._conn, name, room, self._oldest_kept_us())

    def unread(self, name: str, rooms: list[str]) -> dict[str, int]:
        oldest_kept_us = self._oldest_kept_us()
        return {
            room: conversations.unread(self._conn, name, room, oldest_kept_us) for room in rooms
        }

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
        """Delete up to MAINTENANCE_BATCH expired messages, as many dedup keys too old to
        match an append made now or after the latest one, and as many read markers expired or
        beyond the cap; True if more may be left."""
        with self._transaction():
            oldest_kept_us = self._oldest_kept_us()
            gone = self._conn.execute(
                "SELECT room, seq FROM messages INDEXED BY messages_by_time"
                " WHERE sent_at_us < ? LIMIT ?",
                (oldest_kept_us, MAINTENANCE_BATCH),
            ).fetchall()
            self._conn.executemany("DELETE FROM messages WHERE room = ? AND seq = ?", gone)
            self._conn.executemany("DELETE FROM reactions WHERE room = ? AND target_seq = ?", gone)
            self._conn.executemany(
                "UPDATE rooms SET messages = messages - ? WHERE room = ?",
                [(n, room) for room, n in Counter(room for room, _ in gone).items()],
            )
            moment_us = now_us()
            if self._appended_at_us is not None:
                moment_us = min(moment_us, self._appended_at_us)
            keys = self._conn.execute(
                "SELECT sender, key FROM dedup INDEXED BY dedup_by_time"
                " WHERE sent_at_us <= ? LIMIT ?",
                (moment_us - self._dedup_window_us, MAINTENANCE_BATCH),
            ).fetchall()
            self._conn.executemany("DELETE FROM dedup WHERE sender = ? AND key = ?", keys)
            markers_left = conversations.prune_markers(
                self._conn, oldest_kept_us, self._max_markers, MAINTENANCE_BATCH
            )
        return MAINTENANCE_BATCH in (len(gone), len(keys)) or markers_left

    def close(self) -> None:
        self._conn.close()
        release(self._held)
        self._held = None

    def _oldest_kept_us(self) -> int:
        return now_us() - self._max_age_us

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
            self._conn.execute(
                "DELETE FROM reactions WHERE room = ? AND target_seq <= ?",
                (room, last_seq - self._max_messages),
            )


def _relation_columns(relation: Relation | None) -> tuple[str, str, str]:
    """kind, target, emoji as stored ('' for a message)."""
    if relation is None:
        return "", "", ""
    return relation.kind.value, relation.target, relation.emoji
