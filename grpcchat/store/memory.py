"""History kept in this process only: gone at exit, a new epoch at every start.

Nothing here awaits, so each call is atomic on the event loop; every operation is a dict,
deque or sorted-list step. Expired messages are dropped from the front of a room whenever it
is touched; the few that may hide behind fresher ones (appended while the clock stood earlier,
see `_Room.late`) are skipped by `read` and counted out by `rooms` and `unread` until they
reach the front.

Relations (edits, deletes, reactions) change the current state of their target in place: each
retained entry is held once, as it is now, under its id, so a relation finds its target, a
delete erases the text it must, and a repeated key returns its original as it is now, with dict
lookups.

Read markers are an OrderedDict, least recently moved first: a move puts its marker last, the
cap drops from the front, and so does age (the front is the oldest move, the wall clock
permitting), whenever a marker moves.
"""

from __future__ import annotations

import heapq
import uuid
from bisect import bisect_left, bisect_right, insort
from collections import OrderedDict, deque
from dataclasses import replace
from datetime import UTC, datetime
from itertools import islice

from grpcchat.core import relations
from grpcchat.core.history import MAX_UNREAD, Appended, Retention, RoomCount
from grpcchat.core.models import Message, Relation, RelationKind


class _Room:
    """One room's retained entries, oldest first.

    Only the oldest are ever removed, so the seqs held are contiguous and a seq is found by
    arithmetic instead of a search.
    """

    __slots__ = (
        "edits",
        "entries",
        "last_seq",
        "late",
        "latest",
        "live",
        "live_by",
        "name",
        "order",
    )

    def __init__(self, name: str) -> None:
        self.name = name
        self.last_seq = 0
        # The ids of the entries held, in seq order, and each entry as it is now.
        self.order: deque[str] = deque()
        self.entries: dict[str, Message] = {}
        # The ids of the EDIT entries of each message that has any: counted against
        # MAX_EDITS, erased by a delete. An edit always follows its target, so it is pruned
        # after it.
        self.edits: dict[str, list[str]] = {}
        # Seqs of the messages (no relations) that are not deleted, in order, all of them and
        # per sender: `unread` is two bisections (less the expired ones hiding behind fresher
        # ones, see `late`). Deques: pruning pops the front of each at every append of a full
        # room, which in a list of 10,000 moved them all (2-3 µs of a ~9 µs append).
        self.live: deque[int] = deque()
        self.live_by: dict[str, deque[int]] = {}
        # The latest time appended so far, and (time, seq), in that order, of each message held
        # that was appended with an earlier time than some message before it (the wall clock
        # stepped back). Every other message is at least as recent as all before it, so once
        # the front is fresh only these can be expired: counting is len() minus a bisection.
        self.latest: datetime | None = None
        self.late: list[tuple[datetime, int]] = []

    def at_seq(self, seq: int) -> Message:
        """The entry held at `seq` (which must be held)."""
        return self.entries[self.order[seq - self.entries[self.order[0]].seq]]


class MemoryStore:
    """The `HistoryStore` contract on plain dicts and deques."""

    def __init__(self, retention: Retention) -> None:
        self._retention = retention
        self._epoch = uuid.uuid4().hex
        self._rooms: dict[str, _Room] = {}
        # Names of the rooms holding messages, sorted: a `rooms` page is a slice of it.
        self._listed: list[str] = []
        # (sender, key) -> the message first stored under it; and the key of each id held
        # there, so a delete can erase the text remembered with a key too. A repeat returns
        # the entry as the room holds it now; this copy only once retention has removed it
        # from the room.
        self._keys: dict[tuple[str, str], Message] = {}
        self._key_of: dict[str, tuple[str, str]] = {}
        # The keys by their message's `sent_at`, earliest first, so forgetting the expired ones
        # is a pop from a heap: in the order they were made, a key stamped far ahead (by a
        # clock stepped back since) held every key behind it in memory until its stamp came.
        # An entry whose key was made again since is passed over when it comes up.
        self._key_times: list[tuple[datetime, tuple[str, str]]] = []
        # (user, room) -> (the seq up to which the user has read, when it last moved), least
        # recently moved first: at most `retention.max_markers`, none older than `max_age`.
        self._markers: OrderedDict[tuple[str, str], tuple[int, datetime]] = OrderedDict()

    @property
    def epoch(self) -> str:
        return self._epoch

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
    ) -> Appended:
        if sent_at.tzinfo is None:
            raise ValueError("sent_at must be timezone-aware")
        sent_at = sent_at.astimezone(UTC)
        # Keys first used at or before this moment are past the dedup window for this append.
        expired_before = sent_at - self._retention.dedup_window
        # Forgotten for good only once past it by the clock too, as SQLite's maintenance does:
        # an append stamped later than a retry (a clock stepped back) must not drop its key.
        forgotten_before = min(sent_at, datetime.now(UTC)) - self._retention.dedup_window
        while self._key_times and self._key_times[0][0] <= forgotten_before:
            made, held = heapq.heappop(self._key_times)
            if (forgotten := self._keys.get(held)) is not None and forgotten.sent_at == made:
                del self._keys[held]
                self._key_of.pop(forgotten.id, None)
        original = self._keys.get((sender, key)) if key else None
        oldest_kept = self._oldest_kept()
        if original is not None and original.sent_at > expired_before:
            now = self._find(self._rooms.get(original.room), original.id, oldest_kept)
            return Appended(now or original, duplicate=True)

        state = self._rooms.get(room)
        if state is not None:
            self._prune(state, oldest_kept)
        # Everything that may refuse comes before the first change: a refusal leaves nothing.
        if reply_to:
            relations.check_target(
                self._find(state, reply_to, oldest_kept), room, reply_to, kind=None
            )
        target: Message | None = None
        if relation is not None:
            target = relations.check_target(
                self._find(state, relation.target, oldest_kept),
                room,
                relation.target,
                kind=relation.kind,
            )
            assert state is not None  # the target was found in it
            edits = len(state.edits.get(target.id, ()))
            relations.check_relation(target, sender, relation, edits)

        if state is None:
            state = self._rooms[room] = _Room(room)
        state.last_seq += 1
        message = Message(
            id=id,
            room=room,
            sender=sender,
            text=text,
            sent_at=sent_at,
            seq=state.last_seq,
            epoch=self._epoch,
            action=action,
            reply_to=reply_to,
            relation=relation,
        )
        if not state.order:
            insort(self._listed, room)
        state.order.append(id)
        state.entries[id] = message
        if target is None:
            state.live.append(message.seq)
            mine = state.live_by.get(sender)
            if mine is None:  # not setdefault: that would make an empty deque every append
                mine = state.live_by[sender] = deque()
            mine.append(message.seq)
        else:
            self._apply(state, target, message)
        if state.latest is not None and sent_at < state.latest:
            insort(state.late, (sent_at, message.seq))
        else:
            state.latest = sent_at
        if key:
            replaced = self._keys.pop((sender, key), None)
            if replaced is not None:
                self._key_of.pop(replaced.id, None)
            self._keys[sender, key] = message
            heapq.heappush(self._key_times, (sent_at, (sender, key)))
            self._key_of[id] = (sender, key)
        self._prune(state, oldest_kept)
        return Appended(message, duplicate=False)

    async def read(
        self,
        room: str,
        *,
        after: int | None = None,
        before: int | None = None,
        limit: int = 100,
        newest_first: bool = False,
    ) -> list[Message]:
        state = self._rooms.get(room)
        if state is None or limit <= 0:
            return []
        oldest_kept = self._oldest_kept()
        self._prune(state, oldest_kept)
        if not state.order:
            return []
        first = state.entries[state.order[0]].seq
        # Exclusive bounds, clamped to the seqs held.
        low = max(after if after is not None else 0, first - 1)
        high = min(before if before is not None else state.last_seq + 1, state.last_seq + 1)
        if high - low <= 1:
            return []
        if newest_first:
            candidates = islice(reversed(state.order), state.last_seq + 1 - high, None)
        else:
            candidates = islice(state.order, low + 1 - first, None)
        page: list[Message] = []
        for id in candidates:
            message = state.entries[id]
            if not low < message.seq < high:
                break
            if message.sent_at >= oldest_kept:
                page.append(message)
                if len(page) == limit:
                    break
        return page

    async def last_seq(self, room: str) -> int:
        state = self._rooms.get(room)
        return state.last_seq if state else 0

    async def mark_read(self, user: str, room: str, seq: int) -> int:
        oldest_kept = self._oldest_kept()
        marker = self._marker(user, room, oldest_kept)
        moved = min(seq, await self.last_seq(room))
        if moved <= marker:
            return marker
        self._markers[user, room] = (moved, datetime.now(UTC))
        self._markers.move_to_end((user, room))
        while self._markers and (
            len(self._markers) > self._retention.max_markers
            or next(iter(self._markers.values()))[1] < oldest_kept
        ):
            self._markers.popitem(last=False)
        return moved

    async def read_marker(self, user: str, room: str) -> int:
        return self._marker(user, room, self._oldest_kept())

    async def unread(self, user: str, rooms: list[str]) -> dict[str, int]:
        oldest_kept = self._oldest_kept()
        counts: dict[str, int] = {}
        for room in rooms:
            state = self._rooms.get(room)
            if state is None:
                counts[room] = 0
                continue
            self._prune(state, oldest_kept)
            marker = self._marker(user, room, oldest_kept)
            mine = state.live_by.get(user, ())
            count = len(state.live) - bisect_right(state.live, marker)
            count -= len(mine) - bisect_right(mine, marker)
            # Expired messages behind fresher ones are still held: count them out.
            expired = bisect_left(state.late, oldest_kept, key=lambda entry: entry[0])
            for _, seq in state.late[:expired]:
                message = state.at_seq(seq)
                if seq > marker and _counts(message) and message.sender != user:
                    count -= 1
            counts[room] = min(count, MAX_UNREAD)
        return counts

    async def rooms(self, *, after: str = "", limit: int = 100) -> list[RoomCount]:
        oldest_kept = self._oldest_kept()
        page: list[RoomCount] = []
        index = bisect_right(self._listed, after)
        while len(page) < limit and index < len(self._listed):
            state = self._rooms[self._listed[index]]
            self._prune(state, oldest_kept)
            if not state.order:
                continue  # it left the list: the next room now sits at `index`
            expired = bisect_left(state.late, oldest_kept, key=lambda entry: entry[0])
            page.append(RoomCount(state.name, len(state.order) - expired))
            index += 1
        return page

    async def aclose(self) -> None:
        """Nothing to release: the history goes with the object."""

    def _oldest_kept(self) -> datetime:
        return datetime.now(UTC) - self._retention.max_age

    def _marker(self, user: str, room: str, oldest_kept: datetime) -> int:
        """The marker, 0 if none or if it last moved before `oldest_kept` (expired: a later
        move drops it from the front)."""
        marker = self._markers.get((user, room))
        return marker[0] if marker is not None and marker[1] >= oldest_kept else 0

    def _find(self, state: _Room | None, id: str, oldest_kept: datetime) -> Message | None:
        """The retained entry `id` of the (pruned) room, if any."""
        found = state.entries.get(id) if state is not None else None
        return found if found is not None and found.sent_at >= oldest_kept else None

    def _apply(self, state: _Room, target: Message, entry: Message) -> None:
        """Change `target` (held in `state`) by the relation `entry`, already validated."""
        assert entry.relation is not None
        state.entries[target.id] = relations.apply(target, entry)
        match entry.relation.kind:
            case RelationKind.EDIT:
                state.edits.setdefault(target.id, []).append(entry.id)
            case RelationKind.DELETE:
                _remove(state.live, target.seq)
                _remove(state.live_by[target.sender], target.seq)
                if not state.live_by[target.sender]:
                    del state.live_by[target.sender]
                # As SQLite's key remembers a deleted original: erased, never edited.
                self._erase_key(replace(state.entries[target.id], edited_at=None))
                for edit in state.edits.pop(target.id, ()):
                    state.entries[edit] = relations.erased(state.entries[edit])
                    self._erase_key(state.entries[edit])
            case RelationKind.REACT | RelationKind.UNREACT:
                pass

    def _erase_key(self, erased: Message) -> None:
        """Remember the entry `erased` (a tombstone, or an edit without its text) under its
        key, if it has one, in place of the text remembered there."""
        key = self._key_of.get(erased.id)
        if key is not None:
            self._keys[key] = erased

    def _prune(self, state: _Room, oldest_kept: datetime) -> None:
        """Drop the room's oldest entries beyond the count limit or age limit; unlist it if
        none are left. Once this returns, the front entry is retained (or there is none)."""
        order, entries = state.order, state.entries
        first_kept_seq = state.last_seq - self._retention.max_messages + 1
        while order:
            front = entries[order[0]]
            if front.seq >= first_kept_seq and front.sent_at >= oldest_kept:
                break
            order.popleft()
            del entries[front.id]
            state.edits.pop(front.id, None)
            if _counts(front):  # held in `live`, where it is the first
                state.live.popleft()
                mine = state.live_by[front.sender]
                mine.popleft()
                if not mine:
                    del state.live_by[front.sender]
            if state.late:
                entry = (front.sent_at, front.seq)
                at = bisect_left(state.late, entry)
                if at < len(state.late) and state.late[at] == entry:
                    del state.late[at]
            if not order:
                del self._listed[bisect_left(self._listed, state.name)]


def _counts(message: Message) -> bool:
    """Whether `message` is one `unread` counts (for anyone but its sender)."""
    return message.relation is None and not message.deleted


def _remove(seqs: deque[int], seq: int) -> None:
    del seqs[bisect_left(seqs, seq)]
