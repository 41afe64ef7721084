"""What `join` has shown of one room: the last messages, by seq and by id, each in its current
state, so a relation entry that arrives (an edit, a delete, a reaction) can be applied to the
message it changes and the message shown again, and a reply can quote what it answers."""

from __future__ import annotations

from collections import OrderedDict

from grpcchat.core import relations
from grpcchat.core.models import Message

# Messages kept per room: enough for anything still on screen, bounded like everything else.
MAX_KEPT = 1000


class RoomLog:
    """The last MAX_KEPT messages shown of one room (the oldest shown goes first), each with
    the replay it was read in (0: live): a message read in a replay is in its current state as
    of that replay, so the relation entries the same replay carries are in it already."""

    def __init__(self, limit: int = MAX_KEPT) -> None:
        self._limit = limit
        self._by_seq: OrderedDict[int, tuple[Message, int]] = OrderedDict()
        self._seq_of: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._by_seq)

    def add(self, message: Message, replay: int = 0) -> None:
        """Keep `message` (a message with a seq, not a relation entry), replacing what was
        kept under its seq."""
        if not message.seq or message.relation is not None:
            return
        self._by_seq.pop(message.seq, None)
        self._by_seq[message.seq] = (message, replay)
        self._seq_of[message.id] = message.seq
        while len(self._by_seq) > self._limit:
            _, (oldest, _) = self._by_seq.popitem(last=False)
            self._seq_of.pop(oldest.id, None)

    def at(self, seq: int) -> Message | None:
        kept = self._by_seq.get(seq)
        return kept[0] if kept is not None else None

    def by_id(self, message_id: str) -> Message | None:
        seq = self._seq_of.get(message_id)
        return self.at(seq) if seq is not None else None

    def replay_of(self, message_id: str) -> int | None:
        """The replay the message with this id was read in (0: live), None if not kept."""
        seq = self._seq_of.get(message_id)
        kept = self._by_seq.get(seq) if seq is not None else None
        return kept[1] if kept is not None else None

    def apply(self, entry: Message) -> Message | None:
        """Apply the relation `entry` to the message it changes and return that message as it
        is now; None if that message is not kept here, or if it was that way already (a replay
        page read late may carry a change that then also arrives live)."""
        assert entry.relation is not None
        seq = self._seq_of.get(entry.relation.target)
        if seq is None:
            return None
        target, replay = self._by_seq[seq]
        changed = relations.apply(target, entry)
        if changed == target:
            return None
        self._by_seq[seq] = (changed, replay)
        return changed

    def last_of(self, sender: str) -> Message | None:
        """`sender`'s latest message kept here that is not deleted."""
        own = [m for m, _ in self._by_seq.values() if m.sender == sender and not m.deleted]
        return max(own, key=lambda m: m.seq, default=None)
