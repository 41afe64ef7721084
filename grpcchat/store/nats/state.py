"""What the relations of a room's log made of its messages: `RoomState`, an index of one room's
retained entries kept by each process, and `RoomStates`, a bounded set of them.

Pure bookkeeping, no I/O: the engine feeds it the room's stored entries in stream order
(`indexes` reads the room once when it is first needed, or reads on from where it stopped; the
appender and the feed add the appends they see) and asks it what a relation may do, what a read
returns, and how many entries a room holds or a user has not read.

Why an index and not a fold at each read: JetStream messages are immutable, so a message's
current state is the fold of every later relation naming it, and those may sit anywhere after
it in the room (a reaction to the oldest message retained is the newest entry). Folding per
read would read the whole retained room every time; validating an append needs the same fold.
The index is built once per room (a run of its retained entries, at most the retention count)
and then follows the room: every process sees every append, in order, through the feed, and
reads on from its last entry when it is behind. It keeps no text but an edit's (the stream has
the rest), so a full room costs a few MB; `RoomStates` keeps the most recently used rooms up to
MAX_INDEXED entries in all.
"""

from __future__ import annotations

import asyncio
import bisect
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

from grpcchat.core import relations
from grpcchat.core.models import Message, Relation, RelationKind
from grpcchat.store.nats import codec
from grpcchat.store.nats.codec import Erased, Gone, Stored

# Entries indexed in all, over every room (the least recently used rooms go first).
MAX_INDEXED = 200_000


@dataclass(slots=True)
class _Entry:
    """One retained entry: its current state (text "" unless edited: the stream has it)."""

    message: Message
    sent_us: int
    stream_seq: int
    key: str = ""
    edits: list[Erased] = field(default_factory=list)


class Tally:
    """How many entries some indexes hold in all, kept up by each as it changes."""

    __slots__ = ("entries",)

    def __init__(self) -> None:
        self.entries = 0


class RoomState:
    """The current state of one room's retained entries, as of the entry `last`."""

    def __init__(
        self, room: str, epoch: str, max_messages: int, tally: Tally | None = None
    ) -> None:
        self.room = room
        self._epoch = epoch
        self._max_messages = max_messages
        # Where this index counts its entries (a set of indexes' total, see `RoomStates`).
        self.tally = tally or Tally()
        # Held by whoever reads the stream to bring the index up to date.
        self.lock = asyncio.Lock()
        self._entries: dict[str, _Entry] = {}
        self.reset()

    def reset(self) -> None:
        self.last: Stored | None = None
        self.tally.entries -= len(self._entries)
        self._entries = {}
        self._by_seq: dict[int, str] = {}
        # Entries are applied in seq order, except those rebuilt from a DELETE's `gone`.
        self._sorted = True
        self._keys: dict[str, str] = {}
        # The seqs of the entries whose stream message a DELETE erased (also sorted).
        self._erased: set[int] = set()
        self._erased_seqs: list[int] = []

    def __len__(self) -> int:
        return len(self._entries)

    # -- following the log --------------------------------------------------------------------

    def offer(self, stored: Stored) -> None:
        """An entry seen on the feed: applied if it is the next one (else a later read on the
        stream brings the index up to date)."""
        if self.last is not None and stored.seq == self.last.seq + 1:
            self.apply(stored)

    def apply(self, stored: Stored) -> None:
        """The room's next stored entry (one this index has seen already is ignored)."""
        if self.last is not None and stored.stream_seq <= self.last.stream_seq:
            return
        self.last = stored
        message = stored.message
        self._add(_Entry(replace(message, text=""), stored.sent_us, stored.stream_seq))
        if stored.msg_id:
            key = stored.msg_id.partition("#")[0]
            self._keys[key] = message.id
            self._entries[message.id].key = key
        relation = message.relation
        if relation is not None:
            self._apply_relation(stored, relation)
        self._trim(stored.seq - self._max_messages + 1)

    def _apply_relation(self, stored: Stored, relation: Relation) -> None:
        entry = stored.message
        target = self._entries.get(relation.target)
        if relation.kind is RelationKind.DELETE and stored.gone is not None:
            if target is None:
                target = self._rebuild(entry, stored.gone)
            for erased in (stored.gone.target, *stored.gone.edits):
                self._erase(erased.seq)
        if target is None or target.message.relation is not None:
            return  # not an entry this index holds (anything else was refused at append)
        if target.message.deleted:
            return
        target.message = relations.apply(target.message, entry)
        if relation.kind is RelationKind.EDIT:
            target.edits.append(Erased(entry.id, entry.seq, stored.sent_us, stored.stream_seq))
        elif relation.kind is RelationKind.DELETE:
            self._erase(target.message.seq)
            for edit in target.edits:
                self._erase(edit.seq)

    def _rebuild(self, delete: Message, gone: Gone) -> _Entry:
        """The tombstone (and emptied edits) of a target whose stream messages are erased."""
        edited_at = None
        for edit in sorted(gone.edits, key=lambda e: e.seq):
            edited_at = codec.from_us(edit.sent_us)
            self._add(
                _Entry(
                    replace(
                        delete,
                        id=edit.id,
                        seq=edit.seq,
                        sent_at=edited_at,
                        reply_to="",
                        relation=Relation(RelationKind.EDIT, gone.target.id),
                    ),
                    edit.sent_us,
                    edit.stream_seq,
                )
            )
        target = _Entry(
            replace(
                delete,
                id=gone.target.id,
                seq=gone.target.seq,
                sent_at=codec.from_us(gone.target.sent_us),
                action=gone.action,
                reply_to=gone.reply_to,
                relation=None,
                edited_at=edited_at,
                deleted=True,
            ),
            gone.target.sent_us,
            gone.target.stream_seq,
            edits=list(gone.edits),
        )
        self._add(target)
        return target

    def _add(self, entry: _Entry) -> None:
        seq = entry.message.seq
        if self._by_seq and seq < next(reversed(self._by_seq)):
            self._sorted = False
        if entry.message.id not in self._entries:
            self.tally.entries += 1
        self._entries[entry.message.id] = entry
        self._by_seq[seq] = entry.message.id

    def _erase(self, seq: int) -> None:
        if seq not in self._erased:
            self._erased.add(seq)
            bisect.insort(self._erased_seqs, seq)

    def _trim(self, window_start: int) -> None:
        """Forget the entries before the retention window."""
        self._sort()
        while self._by_seq:
            seq = next(iter(self._by_seq))
            if seq >= window_start:
                break
            entry = self._entries.pop(self._by_seq.pop(seq))
            self.tally.entries -= 1
            if entry.key and self._keys.get(entry.key) == entry.message.id:
                del self._keys[entry.key]
        cut = bisect.bisect_left(self._erased_seqs, window_start)
        self._erased.difference_update(self._erased_seqs[:cut])
        del self._erased_seqs[:cut]

    def _sort(self) -> None:
        if not self._sorted:
            self._by_seq = dict(sorted(self._by_seq.items()))
            self._sorted = True

    # -- what it tells ------------------------------------------------------------------------

    def target(self, id: str, window_start: int, oldest_kept_us: int) -> Message | None:
        """The current state of the retained entry `id`, None if there is none."""
        entry = self._entries.get(id)
        if entry is None or entry.message.seq < window_start or entry.sent_us < oldest_kept_us:
            return None
        return entry.message

    def edits(self, id: str) -> int:
        entry = self._entries.get(id)
        return len(entry.edits) if entry else 0

    def gone(self, id: str) -> Gone:
        """What deleting the entry `id` erases."""
        entry = self._entries[id]
        message = entry.message
        target = Erased(message.id, message.seq, entry.sent_us, entry.stream_seq)
        return Gone(target, message.action, message.reply_to, tuple(entry.edits))

    def keyed(self, key: str) -> tuple[int, int] | None:
        """The seq and stream seq of the retained entry published under the idempotency key
        `key` (the engine's hash of sender and key), None if there is none."""
        id = self._keys.get(key)
        entry = self._entries.get(id) if id else None
        return (entry.message.seq, entry.stream_seq) if entry else None

    def erased_stream_seq(self, stream_seq: int) -> Message | None:
        """The entry whose erased stream message had this stream seq, as reads show it."""
        for entry in self._entries.values():
            if entry.stream_seq == stream_seq and entry.message.seq in self._erased:
                return self.shown(entry.message.seq)
        return None

    def current(self, message: Message) -> Message:
        """A stored entry as it is now: a message with its latest text, edit time, deletion and
        reactions; an EDIT of a deleted message without its text."""
        relation = message.relation
        if relation is None:
            entry = self._entries.get(message.id)
            if entry is None or entry.message.seq != message.seq:
                return message
            state = entry.message
            edited = state.deleted or state.edited_at is not None
            return replace(
                message,
                text=state.text if edited else message.text,
                edited_at=state.edited_at,
                deleted=state.deleted,
                reactions=state.reactions,
            )
        if relation.kind is RelationKind.EDIT:
            target = self._entries.get(relation.target)
            if target is not None and target.message.deleted:
                return relations.erased(message)
        return message

    def erased_between(self, low: int, high: int) -> list[Message]:
        """The erased entries with `low < seq < high`, in seq order, as reads show them."""
        start = bisect.bisect_right(self._erased_seqs, low)
        end = bisect.bisect_left(self._erased_seqs, high)
        return [self.shown(seq) for seq in self._erased_seqs[start:end] if seq in self._by_seq]

    def shown(self, seq: int) -> Message:
        """The entry at `seq` (which this index holds) as a read shows it, text aside for a
        message never edited (which only the stream has)."""
        entry = self._entries[self._by_seq[seq]]
        if entry.message.relation is not None:
            return self.current(entry.message)
        return entry.message

    def count(self, window_start: int, oldest_kept_us: int) -> int:
        """How many retained entries the room holds (what a read would return)."""
        return sum(
            1
            for entry in self._entries.values()
            if entry.message.seq >= window_start and entry.sent_us >= oldest_kept_us
        )

    def unread(
        self, user: str, marker: int, window_start: int, oldest_kept_us: int, cap: int
    ) -> int:
        """Retained messages after `marker`, not deleted, not `user`'s: at most `cap`."""
        count = 0
        for entry in self._newest_first():
            message = entry.message
            if message.seq <= marker or message.seq < window_start:
                break
            if (
                message.relation is None
                and not message.deleted
                and message.sender != user
                and entry.sent_us >= oldest_kept_us
            ):
                count += 1
                if count >= cap:
                    break
        return count

    def _newest_first(self) -> Iterator[_Entry]:
        self._sort()
        for seq in reversed(self._by_seq):
            yield self._entries[self._by_seq[seq]]


class RoomStates:
    """The rooms indexed in this process, least recently used first, at most MAX_INDEXED
    entries in all (the room in use is never dropped)."""

    def __init__(self, epoch: str, max_messages: int, max_indexed: int = MAX_INDEXED) -> None:
        self._epoch = epoch
        self._max_messages = max_messages
        self._max_indexed = max_indexed
        self._rooms: OrderedDict[str, RoomState] = OrderedDict()
        # The entries of every index held here, kept up by the indexes as they change.
        self._tally = Tally()

    def get(self, room: str) -> RoomState:
        """The room's index (a new, empty one if it has none), now the most recently used."""
        state = self._rooms.get(room)
        if state is None:
            state = RoomState(room, self._epoch, self._max_messages, self._tally)
            self._rooms[room] = state
        self._rooms.move_to_end(room)
        self._bound()
        return state

    def peek(self, room: str) -> RoomState | None:
        return self._rooms.get(room)

    @property
    def entries(self) -> int:
        """How many entries the indexes held here hold in all."""
        return self._tally.entries

    def _bound(self) -> None:
        while self._tally.entries > self._max_indexed and len(self._rooms) > 1:
            _, dropped = self._rooms.popitem(last=False)
            # Whoever still holds it may change it: no longer counted here.
            self._tally.entries -= len(dropped)
            dropped.tally = Tally()
            dropped.tally.entries = len(dropped)
