"""What a join replays, as a cursor the session's writer pages through.

A replay is never read into memory at once: the writer asks for the next page only when its
queue runs short, so a session holds at most about one page of history however much it asks
for (and however often it joins and leaves). A position that cannot be honoured is reported as
a `HistoryGap`, never skipped silently.
"""

from __future__ import annotations

from grpcchat.core.history import HistoryStore
from grpcchat.core.models import Envelope, HistoryGap, Message, Position
from grpcchat.core.stats import HubStats

# A replay page also ends before its text passes this many bytes (the rest is the next page):
# a session that stops reading holds one page, and 512 messages of 16 KiB were 8 MB of it.
MAX_REPLAY_PAGE_BYTES = 512 << 10


def within_bytes(messages: list[Message], most: int) -> tuple[list[Message], int]:
    """The first of `messages` whose text comes to at most `most` bytes (the first always),
    and the bytes counted to tell."""
    size = 0
    for taken, message in enumerate(messages):
        size += len(message.text.encode())
        if size > most and taken:
            return messages[:taken], size
    return messages, size


class ReplayCursor:
    """The messages of one room with `after < seq <= until`, oldest first, a page at a time,
    preceded by the gap to report (if any)."""

    def __init__(
        self,
        store: HistoryStore,
        room: str,
        *,
        after: int,
        until: int,
        gap: HistoryGap | None = None,
        resumed_from: int | None = None,
        cut_reason: str = "",
        stats: HubStats | None = None,
    ) -> None:
        self.room = room
        self._store = store
        self._after = after
        # The room's latest seq when the join began: anything newer arrives live.
        self.until = until
        self._gap = gap
        # For a resume: the seq the client last saw, so a first message beyond it reveals
        # messages lost to retention (or cut by max_replay: `cut_reason`).
        self._resumed_from = resumed_from
        self._cut_reason = cut_reason
        self._stats = stats
        self.last_replayed = 0

    def extend(self, until: int) -> None:
        """Replay up to `until` if that is further (messages stored since the join began)."""
        self.until = max(self.until, until)

    @property
    def exhausted(self) -> bool:
        return self._gap is None and self._after >= self.until

    async def next_page(self, limit: int) -> list[Envelope]:
        """The next envelopes to queue (empty once exhausted)."""
        page: list[Envelope] = []
        if self._gap is not None:
            page.append(Envelope(self._gap))
            self._gap = None
            self._count_gap()
        if self._after >= self.until:
            return page
        messages = await self._store.read(
            self.room, after=self._after, limit=min(limit, self.until - self._after)
        )
        if self._resumed_from is not None:
            first = messages[0].seq if messages else self.until + 1
            if first > self._resumed_from + 1:
                reason = self._cut_reason or "older messages are past retention"
                page.append(
                    Envelope(HistoryGap(self.room, self._resumed_from + 1, first - 1, reason))
                )
                self._count_gap()
            self._resumed_from = None
        if not messages:
            self._after = self.until  # the rest was pruned meanwhile
            return page
        messages, _ = within_bytes(messages, MAX_REPLAY_PAGE_BYTES)
        page += [Envelope(m) for m in messages]
        self._after = self.last_replayed = messages[-1].seq
        return page

    def _count_gap(self) -> None:
        if self._stats is not None:
            self._stats.gaps += 1


# A join's replay of its last N messages looks back at most this many entries per message, or
# MIN_ENTRIES_SCANNED (edits and reactions are entries of their own): a room of reactions
# replays few messages rather than reading its whole history to find them.
ENTRIES_PER_MESSAGE_SCANNED = 4
MIN_ENTRIES_SCANNED = 200
_SCAN_PAGE = 200


async def _start_of_last_messages(
    store: HistoryStore, room: str, count: int, last_seq: int, max_replay: int
) -> int:
    """The seq after which the room's last `count` messages start: seqs number every entry,
    edits and reactions too, so the last `count` seqs were as few messages as there were
    changes among them. Read newest first, within a bound (see above), and never more than
    a replay may hold (`max_replay`; 0: no limit)."""
    if count <= 0 or last_seq <= count:
        return max(0, last_seq - count)
    budget = max(count * ENTRIES_PER_MESSAGE_SCANNED, MIN_ENTRIES_SCANNED)
    if max_replay:
        budget = max(count, min(budget, max_replay))
    before = last_seq + 1
    found = 0
    while budget > 0:
        page = await store.read(
            room, before=before, limit=min(_SCAN_PAGE, budget), newest_first=True
        )
        for entry in page:
            if entry.relation is None:
                found += 1
                if found == count:
                    return entry.seq - 1
        if len(page) < min(_SCAN_PAGE, budget):
            return 0  # the start of what the room keeps
        before = page[-1].seq
        budget -= len(page)
    return before - 1


async def plan_replay(
    store: HistoryStore,
    room: str,
    after: Position | None,
    history: int,
    max_replay: int,
    *,
    stats: HubStats | None = None,
) -> ReplayCursor:
    """The cursor for a join: everything after a resume position (at most the newest
    `max_replay`; 0: no limit), or the latest `history` messages with the changes among them.
    The gaps it reports are counted in `stats`."""
    epoch = store.epoch
    last_seq = await store.last_seq(room)
    # A position past the end of this epoch's history means the history was rewound (a
    # restored backup, writes lost in a crash): its seqs will be reused, so say so.
    rewound = after is not None and after.epoch == epoch and after.seq > last_seq
    if after is None or after.epoch != epoch or rewound:
        gap = None
        if after is not None and after.seq:
            reason = "rewound" if rewound else "replaced"
            gap = HistoryGap(room, 0, 0, f"the server's history was {reason} since you left")
        count = min(history, max_replay) if max_replay else history
        start = await _start_of_last_messages(store, room, count, last_seq, max_replay)
        return ReplayCursor(store, room, after=start, until=last_seq, gap=gap, stats=stats)
    start = max(after.seq, last_seq - max_replay) if max_replay else after.seq
    cut = f"more than {max_replay} messages were missed" if start > after.seq else ""
    return ReplayCursor(
        store,
        room,
        after=start,
        until=last_seq,
        resumed_from=after.seq,
        cut_reason=cut,
        stats=stats,
    )
