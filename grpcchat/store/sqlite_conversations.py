"""The conversation statements of the SQLite history, on the thread that owns the connection:
find the message a relation or reply names, apply a relation to it, the reactions of a page,
read markers (and their pruning) and unread counts. `Database` (sqlite_database.py) calls them
inside its transactions; the rules themselves are `grpcchat.core.relations`."""

from __future__ import annotations

import sqlite3

from grpcchat.core.history import MAX_UNREAD
from grpcchat.core.models import Message, Reaction, RelationKind
from grpcchat.store.sqlite_rows import COLUMNS, grouped, message, to_us


def find(
    conn: sqlite3.Connection, room: str, id: str, oldest_kept_us: int, epoch: str
) -> tuple[Message, int] | None:
    """The retained entry `id` of `room` as it is now, with its reactions, and how many times
    it was edited; None if there is none. (Entries beyond the count limit are deleted in the
    transaction that pushed them out, so only age needs checking.)"""
    row = conn.execute(
        f"SELECT {COLUMNS}, edits FROM messages INDEXED BY messages_by_id"
        " WHERE id = ? AND room = ? AND sent_at_us >= ?",
        (id, room, oldest_kept_us),
    ).fetchone()
    if row is None:
        return None
    reactions = grouped(
        conn.execute(
            "SELECT emoji, name FROM reactions WHERE room = ? AND target_seq = ?"
            " ORDER BY emoji_seq, seq",
            (room, row[0]),
        ).fetchall()
    )
    return message(room, epoch, row[:-1], reactions), int(row[-1])


def apply(conn: sqlite3.Connection, target: Message, entry: Message) -> None:
    """Change the stored `target` by the relation `entry` (already validated and stored),
    inside the caller's transaction."""
    assert entry.relation is not None
    room, seq = target.room, target.seq
    match entry.relation.kind:
        case RelationKind.EDIT:
            conn.execute(
                "UPDATE messages SET text = ?, edited_at_us = ?, edits = edits + 1"
                " WHERE room = ? AND seq = ?",
                (entry.text, to_us(entry.sent_at), room, seq),
            )
        case RelationKind.DELETE:
            # The text goes from everywhere it is kept: the message, its edits, its key (whose
            # copy of the message reads as deleted too, once the message itself is pruned).
            # The keys are found under their sender (the author, the only one who may edit or
            # delete), a range of dedup's primary key: no index of its own to keep up. An
            # edit's key by its own columns: the edit may have left `messages` already.
            conn.execute(
                "UPDATE dedup SET text = '', deleted = deleted OR id = ?"
                " WHERE sender = ? AND (id = ? OR (kind = 'edit' AND target = ? AND room = ?))",
                (target.id, target.sender, target.id, target.id, room),
            )
            conn.execute(
                "UPDATE messages INDEXED BY messages_by_target SET text = ''"
                " WHERE target = ? AND kind = 'edit' AND kind != '' AND room = ?",
                (target.id, room),
            )
            conn.execute(
                "UPDATE messages SET text = '', deleted = 1 WHERE room = ? AND seq = ?",
                (room, seq),
            )
            conn.execute("DELETE FROM reactions WHERE room = ? AND target_seq = ?", (room, seq))
        case RelationKind.REACT:
            # An emoji keeps the place of its first use while any name stays on it.
            first = conn.execute(
                "SELECT emoji_seq FROM reactions WHERE room = ? AND target_seq = ? AND emoji = ?"
                " LIMIT 1",
                (room, seq, entry.relation.emoji),
            ).fetchone()
            conn.execute(
                "INSERT INTO reactions (room, target_seq, emoji_seq, seq, emoji, name)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (
                    room,
                    seq,
                    first[0] if first else entry.seq,
                    entry.seq,
                    entry.relation.emoji,
                    entry.sender,
                ),
            )
        case RelationKind.UNREACT:
            conn.execute(
                "DELETE FROM reactions"
                " WHERE room = ? AND target_seq = ? AND emoji = ? AND name = ?",
                (room, seq, entry.relation.emoji, entry.sender),
            )


def reactions_between(
    conn: sqlite3.Connection, room: str, first: int, last: int
) -> dict[int, tuple[Reaction, ...]]:
    """The reactions of `room`'s messages first..last (seqs), by seq: one range."""
    rows: dict[int, list[tuple[str, str]]] = {}
    for seq, emoji, name in conn.execute(
        "SELECT target_seq, emoji, name FROM reactions"
        " WHERE room = ? AND target_seq BETWEEN ? AND ? ORDER BY target_seq, emoji_seq, seq",
        (room, first, last),
    ):
        rows.setdefault(seq, []).append((emoji, name))
    return {seq: grouped(pairs) for seq, pairs in rows.items()}


def read_marker(conn: sqlite3.Connection, name: str, room: str, oldest_kept_us: int) -> int:
    """The marker, 0 if there is none or it last moved before `oldest_kept_us` (expired; the
    maintenance job deletes it)."""
    row = conn.execute(
        "SELECT seq FROM read_markers WHERE name = ? AND room = ? AND moved_at_us >= ?",
        (name, room, oldest_kept_us),
    ).fetchone()
    return int(row[0]) if row else 0


def move_marker(conn: sqlite3.Connection, name: str, room: str, seq: int, moved_at_us: int) -> None:
    """Set the marker to `seq`, moved now (inside the caller's transaction, which has checked
    that it moves forward)."""
    conn.execute(
        "INSERT INTO read_markers (name, room, seq, moved_at_us) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (name, room) DO UPDATE"
        " SET seq = excluded.seq, moved_at_us = excluded.moved_at_us",
        (name, room, seq, moved_at_us),
    )


def prune_markers(
    conn: sqlite3.Connection, oldest_kept_us: int, max_markers: int, batch: int
) -> bool:
    """Delete up to `batch` expired markers, then up to `batch` of those beyond the
    `max_markers` most recently moved (inside the caller's transaction); True if more may be
    left. Both walk the time index: the cap skips `max_markers` entries of it per batch (about
    a millisecond for 100,000)."""
    expired = conn.execute(
        "SELECT name, room FROM read_markers INDEXED BY read_markers_by_time"
        " WHERE moved_at_us < ? LIMIT ?",
        (oldest_kept_us, batch),
    ).fetchall()
    conn.executemany("DELETE FROM read_markers WHERE name = ? AND room = ?", expired)
    beyond = conn.execute(
        "SELECT name, room FROM read_markers INDEXED BY read_markers_by_time"
        " ORDER BY moved_at_us DESC LIMIT ? OFFSET ?",
        (batch, max_markers),
    ).fetchall()
    conn.executemany("DELETE FROM read_markers WHERE name = ? AND room = ?", beyond)
    return batch in (len(expired), len(beyond))


def unread(conn: sqlite3.Connection, name: str, room: str, oldest_kept_us: int) -> int:
    """How many messages of `room` after `name`'s marker count as unread, up to MAX_UNREAD:
    a range of the index that holds only messages that are not deleted."""
    row = conn.execute(
        "SELECT COUNT(*) FROM (SELECT 1 FROM messages INDEXED BY messages_unread"
        " WHERE room = ? AND seq > ? AND kind = '' AND deleted = 0 AND sender != ?"
        " AND sent_at_us >= ? LIMIT ?)",
        (room, read_marker(conn, name, room, oldest_kept_us), name, oldest_kept_us, MAX_UNREAD),
    ).fetchone()
    return int(row[0])
