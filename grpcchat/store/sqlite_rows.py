"""How the SQLite history keeps a message in a row: times as integer microseconds since the
Unix epoch, UTC (they sort and compare in SQL and come back exactly as appended), and the
columns a message is read back from."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, TypeAlias

from grpcchat.core.models import Message, Reaction, Relation, RelationKind

_UNIX_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)

# A message's columns as `message` takes them, its current state included.
COLUMNS = (
    "seq, id, sender, text, sent_at_us, action, reply_to, kind, target, emoji, edited_at_us,"
    " deleted"
)
# The same columns as the dedup table remembers them (an entry as appended; a delete erases
# its text and marks it deleted).
KEYED_COLUMNS = (
    "seq, id, sender, text, sent_at_us, action, reply_to, kind, target, emoji, NULL, deleted"
)
Row: TypeAlias = tuple[Any, ...]


def to_us(moment: datetime) -> int:
    if moment.tzinfo is None:
        raise ValueError("sent_at must be timezone-aware")
    return (moment - _UNIX_EPOCH) // _MICROSECOND


def from_us(us: int) -> datetime:
    return _UNIX_EPOCH + timedelta(microseconds=us)


def now_us() -> int:
    return to_us(datetime.now(UTC))


def message(room: str, epoch: str, row: Row, reactions: tuple[Reaction, ...] = ()) -> Message:
    """The message of a row of COLUMNS (or KEYED_COLUMNS)."""
    seq, id, sender, text, sent_at_us, action, reply_to, kind, target, emoji, edited, deleted = row
    return Message(
        id=id,
        room=room,
        sender=sender,
        text=text,
        sent_at=from_us(sent_at_us),
        seq=seq,
        epoch=epoch,
        action=bool(action),
        reply_to=reply_to,
        relation=Relation(RelationKind(kind), target, emoji) if kind else None,
        edited_at=None if edited is None else from_us(edited),
        deleted=bool(deleted),
        reactions=reactions,
    )


def grouped(rows: list[tuple[str, str]]) -> tuple[Reaction, ...]:
    """(emoji, name) rows, in display order, as one Reaction per emoji."""
    names: dict[str, list[str]] = {}
    for emoji, name in rows:
        names.setdefault(emoji, []).append(name)
    return tuple(Reaction(emoji, tuple(who)) for emoji, who in names.items())
