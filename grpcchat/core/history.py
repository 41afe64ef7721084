"""The HistoryStore contract: the durable log the core needs, defined where it is used.

Every engine (`grpcchat.store`) keeps every guarantee written here; the engines do not repeat
it, and one contract test suite (tests/test_store_contract.py) holds each to it."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Protocol

from grpcchat.core.limits import MAX_COUNT
from grpcchat.core.models import Message, Relation
from grpcchat.core.records import record

# A repeated send (same sender, same key) within this window returns the original message.
DEDUP_WINDOW = timedelta(minutes=10)
# Retention per room: the oldest messages beyond either bound are deleted.
MAX_MESSAGES_PER_ROOM = 10_000
MAX_AGE = timedelta(days=30)
MAX_KEEP = timedelta(days=36_500)
# Per message: edits, distinct emoji, and reactions (name and emoji pairs) it may collect.
MAX_EDITS = 100
MAX_DISTINCT_EMOJI = 20
MAX_REACTIONS = 500
# `unread` counts no further: a person reads "1000+" the same as a larger number.
MAX_UNREAD = 1000
# Read markers an engine keeps, over every user and room (the least recently moved go first):
# without auth, MarkRead takes any name, so one client could otherwise make them without end.
MAX_MARKERS = 100_000


@record
class Appended:
    """What `append` did: the message as stored, or, for a repeated key, the original (as it
    is now: see the contract's Idempotency)."""

    message: Message
    duplicate: bool


@record
class RoomCount:
    """One entry of a `rooms` page: a room and how many messages it holds now."""

    name: str
    messages: int


@record
class Retention:
    max_messages: int = MAX_MESSAGES_PER_ROOM
    max_age: timedelta = MAX_AGE
    dedup_window: timedelta = DEDUP_WINDOW
    max_markers: int = MAX_MARKERS

    def __post_init__(self) -> None:
        if not 1 <= self.max_messages <= MAX_COUNT:
            raise ValueError(f"a room keeps 1 to {MAX_COUNT:,} messages, not {self.max_messages:,}")
        if self.max_markers < 1:
            raise ValueError("the store must keep at least one read marker")
        # Ages are subtracted from "now": beyond a century they leave the calendar.
        for name in ("max_age", "dedup_window"):
            if not timedelta(0) < getattr(self, name) <= MAX_KEEP:
                raise ValueError(f"{name.replace('_', ' ')} must be between 0 and 100 years")


class HistoryStore(Protocol):
    """The durable, ordered log of every room.

    Guarantees:
    - `epoch` is fixed for the life of the stored history: the same after reopening the same
      database, different for a new or different one. A position's seq means nothing under
      another epoch.
    - `append` assigns the room's next seq: 1 for a room's first message, then +1 each time,
      never reused or lowered within the epoch, even after retention has deleted messages (and
      even after every message of the room is gone). The returned message carries its seq and
      the store's epoch; it survives the process dying once `append` returns (a machine
      losing power may still lose the last moments: SQLite runs WAL with synchronous=NORMAL).
    - `append` is all or nothing. It returns only once the message is stored, and nothing
      that runs after that can make it fail, so a message it returned is the caller's to
      deliver. Any failure of the engine (a locked or full disk, a closed store) raises
      StoreError, never the engine's own exception, and leaves nothing behind: no message, no
      seq consumed, no key remembered. The store stays usable: the next call is unaffected.
    - Idempotency: if `key` is not empty and the same `sender` appended with the same `key`
      within the dedup window, nothing is stored and the original entry is returned with
      `duplicate=True` (same id, seq, time), whatever text (or room) was passed the second time:
      the original as it is now (its current state, as `read` returns it: see Conversations),
      or, if retention has removed it, as it was stored (text erased and `deleted` set if it
      was deleted since).
      "Within" compares the two appends' `sent_at`: a repeat less than `dedup_window` after the
      original is a duplicate; one `dedup_window` or more after is a new message. Callers pass
      keys of at most `validation.MAX_KEY_BYTES` bytes of UTF-8 (the core validates them);
      engines may rely on that bound.
    - `read` returns messages of one room in seq order (oldest first, or newest first when
      `newest_first`), only those with `after < seq < before` (either bound optional), at most
      `limit` of them, taken from the end nearest the bound being paged from: oldest-first pages
      start right after `after` (or at the oldest message); newest-first pages start right before
      `before` (or at the newest).
    - `rooms` pages through the rooms that hold messages now, in name order (code point order,
      as Python compares str): those whose name sorts strictly after `after` ("" for the first
      page; pass the last name of a page for the next), at most `limit` of them (none when
      `limit <= 0`). A page shorter than `limit` is the last one. Each entry's count is exactly
      how many messages `read` would return for that room at that moment: retained messages
      only, so a room whose messages have all been pruned or have expired is not listed. A
      page costs in proportion to its length (plus, at most, the messages that expired since
      the engine last deleted expired ones), never to the history stored.
    - Retention: a room keeps at most `retention.max_messages` messages (those with
      `seq > last_seq - max_messages`) and none older than `retention.max_age` (each message by
      its own `sent_at`, against the wall clock); the oldest go first. `read` and `rooms` never
      return or count an expired message, however long ago pruning last ran. Deleting what has
      expired is the engine's own job, apart from `append`: it never blocks the event loop, and
      its failures are logged and retried, never raised into an `append`.
    - Concurrent appends are allowed, to one room too, and are numbered in the order they were
      called: an `append` takes its place in line before it first suspends, so a caller that
      starts appends one after another (the hub's per-room chain) gets seqs in that order
      without waiting for each to return. An append whose caller is cancelled while it waits
      may still be stored (the hub shields its appends, so a stored message is delivered).
    - Group commit: an engine may store several waiting appends in one transaction, returning
      from each only after that transaction has committed. Each still ends exactly as it would
      alone (one append failing fails only its caller, and leaves nothing of itself), except
      that an engine unable to begin the shared transaction at all (its file locked by another
      process) may fail every append of the group, each with StoreError, each leaving nothing.
    - No method blocks the event loop: engines doing I/O run it off the loop.

    Conversations (relations are entries of the log, Matrix's model):
    - An append with a `relation` is an entry that changes an earlier message, its `target`:
      it takes the room's next seq like any append, and in the same step (the same
      transaction) the target's current state changes. The target must be a retained entry of
      the same room that is itself no relation and not deleted, else NotFound (an unknown id,
      another room's message, one beyond retention, a direct message: those are never in a
      room's log) or InvalidInput (the target is a relation). EDIT and DELETE are the target's
      sender's only, else PermissionDenied. EDIT: the entry's `text` is the target's new text,
      its `sent_at` the target's `edited_at`; a target edited MAX_EDITS times refuses more
      (CapReached). DELETE: the target's text, and the text of every EDIT of it, is erased
      from storage (""), its reactions are gone, it reads as `deleted`. REACT adds
      (sender, emoji) to the target's reactions (AlreadyExists if there; CapReached beyond
      MAX_DISTINCT_EMOJI emoji or MAX_REACTIONS pairs), UNREACT removes it (NotFound if not
      there); an emoji whose last name goes leaves the list. A refused relation leaves nothing
      (no seq consumed, no key remembered), like any failed append. The key check comes
      first: a repeated key returns the original entry as a duplicate without checking again.
    - `reply_to`, when given, must name a retained message (not a relation) of the same room,
      deleted or not, else NotFound / InvalidInput as above.
    - `read` returns every entry of the log, relations included, each in its current state:
      a message with its latest text, `edited_at`, `deleted` and `reactions` as they are now;
      an EDIT entry of a deleted message with text "".
    - Read markers: per user and room, the seq up to which the user has read. `mark_read`
      only moves a marker forward, never past the room's last seq, and returns it as it is
      afterwards (a call that leaves it where it was does not move it); markers are stored
      like messages (they survive a restart where the history does).
    - Markers are bounded, since without auth anyone may make them under any name: a marker
      expires `retention.max_age` after it last moved (it is kept while its move is no older
      than a message `sent_at` then would be), and an engine keeps at most
      `retention.max_markers` (MAX_MARKERS), forgetting the least recently moved first. A
      forgotten marker reads 0, and moves on from there like a new one. Expiring changes no
      count: every entry a marker covers was appended before its last move (by the same
      clock), so each has expired by the time the marker does, and `unread` from 0 is what it
      was from the marker. The cap may: a user whose marker it forgot (once `max_markers`
      other markers have moved since theirs last did) is counted from 0 again. An engine
      that forgets markers in its own background job (like expired messages) may hold more
      than `max_markers` in between, those moved since the job last ran.
    - `unread` counts, per room asked, the retained entries after the user's marker that are
      messages (no relations), not deleted and not sent by the user, at most MAX_UNREAD;
      exactly so for a room whose current state the engine holds at hand (memory, SQLite:
      every room; NATS: a room indexed in this process, which any `read` of the room, or a
      relation or reply to it, builds, until the index is dropped for space). For any other
      room an engine may instead count what it can without reading the room: at least as
      many as the exact count, at most `last_seq - marker` (relations, the user's own and
      deleted messages, expired ones not yet deleted may be among them), still at most
      MAX_UNREAD.
    """

    @property
    def epoch(self) -> str: ...

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
        reply_to: str = "",
        relation: Relation | None = None,
    ) -> Appended: ...

    async def read(
        self,
        room: str,
        *,
        after: int | None = None,
        before: int | None = None,
        limit: int = 100,
        newest_first: bool = False,
    ) -> list[Message]: ...

    async def last_seq(self, room: str) -> int:
        """The seq of the room's latest append (0 if none), even if it has been pruned."""
        ...

    async def mark_read(self, user: str, room: str, seq: int) -> int:
        """Move `user`'s marker in `room` up to `seq` (never back, never past the last seq);
        the marker afterwards."""
        ...

    async def read_marker(self, user: str, room: str) -> int:
        """`user`'s marker in `room` (0 if none)."""
        ...

    async def unread(self, user: str, rooms: list[str]) -> dict[str, int]:
        """Per room of `rooms`, how many messages `user` has not read (see the contract)."""
        ...

    async def rooms(self, *, after: str = "", limit: int = 100) -> list[RoomCount]:
        """A page of the rooms holding messages: names after `after`, in name order."""
        ...

    async def aclose(self) -> None:
        """Stop the engine's own jobs and release what it holds; calls after it raise
        StoreError. Closing twice is harmless."""
        ...
