"""History kept in this process only: gone at exit, a new epoch at every start.

Nothing here awaits, so each call is atomic on the event loop; every operation is a dict,
deque or sorted-list step. Expired messages are dropped from the front of a room whenever it
is touched; the few that may hide behind fresher ones (appended while the clock stood earlier,
see `_Room.late`) are skipped by `read` and counted out by `rooms` until they reach the front.
"""

from __future__ import annotations

import uuid
from bisect import bisect_left, bisect_right, insort
from collections import OrderedDict, deque
from datetime import UTC, datetime
from itertools import islice

from grpcchat.core.history import Appended, Retention, RoomCount
from grpcchat.core.models import Message


class _Room:
    """One room's retained messages, oldest first.

    Only the oldest are ever removed, so the seqs held are contiguous and a seq is found by
    arithmetic instead of a search.
    """

    __slots__ = ("last_seq", "late", "latest", "messages", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self.last_seq = 0
        self.messages: deque[Message] = deque()
        # The latest time appended so far, and (time, seq), in that order, of each message held
        # that was appended with an earlier time than some message before it (the wall clock
        # stepped back). Every other message is at least as recent as all before it, so once
        # the front is fresh only these can be expired: counting is len() minus a bisection.
        self.latest: datetime | None = None
        self.late: list[tuple[datetime, int]] = []


class MemoryStore:
    """The `HistoryStore` contract on plain dicts and deques."""

    def __init__(self, retention: Retention) -> None:
        self._retention = retention
        self._epoch = uuid.uuid4().hex
        self._rooms: dict[str, _Room] = {}
        # Names of the rooms holding messages, sorted: a `rooms` page is a slice of it.
        self._listed: list[str] = []
        # (sender, key) -> the message first stored under it, oldest first, so forgetting the
        # expired ones is a pop from the front.
        self._keys: OrderedDict[tuple[str, str], Message] = OrderedDict()

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
    ) -> Appended:
        if sent_at.tzinfo is None:
            raise ValueError("sent_at must be timezone-aware")
        sent_at = sent_at.astimezone(UTC)
        # Keys first used at or before this moment are past the dedup window.
        expired_before = sent_at - self._retention.dedup_window
        while self._keys and next(iter(self._keys.values())).sent_at <= expired_before:
            self._keys.popitem(last=False)
        original = self._keys.get((sender, key)) if key else None
        if original is not None and original.sent_at > expired_before:
            return Appended(original, duplicate=True)

        state = self._rooms.get(room)
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
        )
        if not state.messages:
            insort(self._listed, room)
        state.messages.append(message)
        if state.latest is not None and sent_at < state.latest:
            insort(state.late, (sent_at, message.seq))
        else:
            state.latest = sent_at
        if key:
            self._keys[sender, key] = message
            self._keys.move_to_end((sender, key))
        self._prune(state, self._oldest_kept())
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
        if not state.messages:
            return []
        first = state.messages[0].seq
        # Exclusive bounds, clamped to the seqs held.
        low = max(after if after is not None else 0, first - 1)
        high = min(before if before is not None else state.last_seq + 1, state.last_seq + 1)
        if high - low <= 1:
            return []
        if newest_first:
            candidates = islice(reversed(state.messages), state.last_seq + 1 - high, None)
        else:
            candidates = islice(state.messages, low + 1 - first, None)
        page: list[Message] = []
        for message in candidates:
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

    async def rooms(self, *, after: str = "", limit: int = 100) -> list[RoomCount]:
        oldest_kept = self._oldest_kept()
        page: list[RoomCount] = []
        index = bisect_right(self._listed, after)
        while len(page) < limit and index < len(self._listed):
            state = self._rooms[self._listed[index]]
            self._prune(state, oldest_kept)
            if not state.messages:
                continue  # it left the list: the next room now sits at `index`
            expired = bisect_left(state.late, oldest_kept, key=lambda entry: entry[0])
            page.append(RoomCount(state.name, len(state.messages) - expired))
            index += 1
        return page

    async def aclose(self) -> None:
        """Nothing to release: the history goes with the object."""

    def _oldest_kept(self) -> datetime:
        return datetime.now(UTC) - self._retention.max_age

    def _prune(self, state: _Room, oldest_kept: datetime) -> None:
        """Drop the room's oldest messages beyond the count or age limit; unlist it if none
        are left. Once this returns, the front message is retained (or there is none)."""
        messages = state.messages
        first_kept_seq = state.last_seq - self._retention.max_messages + 1
        while messages and (messages[0].seq < first_kept_seq or messages[0].sent_at < oldest_kept):
            gone = messages.popleft()
            if state.late:
                entry = (gone.sent_at, gone.seq)
                at = bisect_left(state.late, entry)
                if at < len(state.late) and state.late[at] == entry:
                    del state.late[at]
            if not messages:
                del self._listed[bisect_left(self._listed, state.name)]
