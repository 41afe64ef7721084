"""Domain types shared by the core, the server adapters and the client.

Nothing here knows about gRPC or protobuf.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from enum import StrEnum

from grpcchat.core.records import record

DEFAULT_ROOM = "lobby"


@record
class Message:
    """A chat message as the server accepted it.

    `(seq, epoch)` is the message's position in its room: `seq` is strictly increasing, assigned
    by the server, the order every subscriber of the room sees; `epoch` names the history that
    numbered it (a new store starts a new epoch, and seqs of different epochs do not compare).
    `id`, `seq` and `epoch` are empty only when the peer is a server that does not assign them
    (the article's Go server).
    """

    id: str
    room: str
    sender: str
    text: str
    sent_at: datetime
    seq: int
    epoch: str = ""
    # A direct message names its recipient and has no room, seq or epoch.
    recipient: str = ""
    # "/me waves": rendered as "* sender waves".
    action: bool = False
    # A reply names the message (same room) it answers.
    reply_to: str = ""
    # Set on an entry of the room's log that changes an earlier message (edit, delete,
    # reaction) instead of saying something new: it has a position like any message, but it
    # is not a new chat line, and the article's Chat stream never sees it.
    relation: Relation | None = None
    # Current state, as `HistoryStore.read` returns a message (a live message has none yet):
    # when its text was last edited, whether it was deleted (its text is then ""), and its
    # reactions, one per emoji in the order each emoji was first used.
    edited_at: datetime | None = None
    deleted: bool = False
    reactions: tuple[Reaction, ...] = ()

    @property
    def position(self) -> Position:
        return Position(self.seq, self.epoch)


class RelationKind(StrEnum):
    EDIT = "edit"
    DELETE = "delete"
    REACT = "react"
    UNREACT = "unreact"


@record
class Relation:
    """What a log entry changes: `target` is the id of a message (not a relation) of the same
    room. An edit's new text is the entry's `text`; reactions name their `emoji`."""

    kind: RelationKind
    target: str
    emoji: str = ""


@record
class Reaction:
    """One emoji on a message, and the names that used it, in the order they reacted."""

    emoji: str
    names: tuple[str, ...]


@record
class Position:
    """A place in a room's history: everything with a greater seq (same epoch) comes after it."""

    seq: int
    epoch: str


@record
class PresenceChange:
    """`name` entered (joined=True) or left a room."""

    room: str
    name: str
    joined: bool
    at: datetime


@record
class PresenceSummary:
    """The join and leave notices of one tick in a room too big to name everyone: how many
    names entered and left, and how many are in the room now."""

    room: str
    joined: int
    left: int
    members: int
    at: datetime


@record
class HistoryGap:
    """Messages first_seq..last_seq of `room` were asked for but cannot be replayed (both 0 when
    the whole history was replaced: another epoch)."""

    room: str
    first_seq: int
    last_seq: int
    reason: str


@record
class RoomJoined:
    """A join is complete: any replay is over, live events follow."""

    room: str
    # Sorted; in a big room only the first names (`member_count` says how many there are).
    members: tuple[str, ...]
    position: Position
    member_count: int = 0
    # The joining user's read marker in the room: seqs up to it have been read (0: none).
    read_seq: int = 0


@record
class RoomLeft:
    room: str


@record
class RequestRefused:
    """A join or leave on a session was refused; `code` is the status a unary call would get."""

    room: str
    code: str
    reason: str


@record
class SendAck:
    """The answer to a message sent on a session stream, matched by the sender's key: the
    message as accepted (the original, for a repeated key: `duplicate`), or a refusal with the
    status code a unary Send would have got (`retry_after` seconds when waiting helps)."""

    key: str
    message: Message | None
    duplicate: bool = False
    code: str = ""
    reason: str = ""
    retry_after: float | None = None


@record
class Typing:
    """`name` is typing in `room` (or stopped: not `active`). Never stored; a notice that is
    not refreshed within `expires_in` seconds has expired."""

    room: str
    name: str
    active: bool
    expires_in: float


@record
class ReadMarker:
    """The user's read marker in `room` moved to `seq` (told to the user's other sessions)."""

    room: str
    seq: int


Event = (
    Message
    | PresenceChange
    | PresenceSummary
    | HistoryGap
    | RoomJoined
    | RoomLeft
    | RequestRefused
    | SendAck
    | Typing
    | ReadMarker
)


@record
class RoomInfo:
    name: str
    members: int
    messages: int
    # Messages after the caller's read marker (see `HistoryStore.unread`); 0 without a caller.
    unread: int = 0


class Envelope:
    """An event on its way to many sessions.

    Fan-out hands the same envelope to every session concerned; each wire format encodes the
    event once, on first use, and every other session reuses the bytes. `accepted_at` is when
    the hub accepted a live message (`time.monotonic()`; 0 for anything else, replays included):
    the writer measures fan-out latency from it. `paged`: part of one session's join (its
    replayed history and the event that ends it), which does not count against the capacity of
    that session's queue (see `Session`).
    """

    __slots__ = ("_encoded", "accepted_at", "event", "paged")

    def __init__(self, event: Event, accepted_at: float = 0.0) -> None:
        self.event = event
        self.accepted_at = accepted_at
        self.paged = False
        self._encoded: dict[Callable[[Event], bytes], bytes] = {}

    def encoded(self, codec: Callable[[Event], bytes]) -> bytes:
        """The event encoded by `codec`, computed at most once per codec."""
        data = self._encoded.get(codec)
        if data is None:
            data = self._encoded[codec] = codec(self.event)
        return data
