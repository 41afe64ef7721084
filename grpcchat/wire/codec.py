"""Protobuf <-> domain translation, for the servicer and the client (the only other modules that
import generated code)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp

from grpcchat.core.models import (
    DEFAULT_ROOM,
    Event,
    HistoryGap,
    Message,
    Position,
    PresenceChange,
    PresenceSummary,
    Reaction,
    ReadMarker,
    Relation,
    RelationKind,
    RequestRefused,
    RoomJoined,
    RoomLeft,
    SendAck,
    Typing,
)
from grpcchat.gen.chat.v1 import chat_service_pb2 as pb

# Tag of field 1 (`events`, length-delimited) of SubscribeResponse and ConnectResponse: a
# response is just a run of framed events, so a batch is built by concatenating events that
# were each encoded once.
_EVENTS_FIELD_TAG = b"\x0a"
# Tags of Event.message, Event.ack, SendAck.key, SendAck.message (all length-delimited), and
# SendAck.duplicate = true: `encode_event_frame` writes these two events itself, in field order
# as protobuf does (tests compare the bytes).
_EVENT_MESSAGE_TAG, _EVENT_ACK_TAG = b"\x0a", b"\x42"
_ACK_KEY_TAG, _ACK_MESSAGE_TAG, _ACK_DUPLICATE = b"\x0a", b"\x12", b"\x18\x01"
# Trailing metadata of a rate-limited call: milliseconds until a retry may succeed.
RETRY_AFTER_KEY = "retry-after-ms"
# Initial metadata of a Connect stream whose server reads `ConnectRequest.sends`: a client
# packs only then, so it keeps working against servers from before the batch existed.
SENDS_HEADER = ("grpcchat-sends", "1")
# A client packs sends while the batch is below this: one more of the largest (~16 KiB) keeps
# the request under the server's 64 KiB limit.
PACKED_SENDS_BYTES = 32 * 1024

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_JOINED, _LEFT = pb.PresenceChange.CHANGE_JOINED, pb.PresenceChange.CHANGE_LEFT
_KIND_TO_PROTO = {
    RelationKind.EDIT: pb.Relation.KIND_EDIT,
    RelationKind.DELETE: pb.Relation.KIND_DELETE,
    RelationKind.REACT: pb.Relation.KIND_REACT,
    RelationKind.UNREACT: pb.Relation.KIND_UNREACT,
}
_KIND_FROM_PROTO = {value: kind for kind, value in _KIND_TO_PROTO.items()}


def reads_packed_sends(initial_metadata: Iterable[tuple[str, str | bytes]] | None) -> bool:
    """Whether a Connect stream's headers say its server reads `ConnectRequest.sends`."""
    return initial_metadata is not None and SENDS_HEADER in tuple(initial_metadata)


def _timestamp(moment: datetime) -> Timestamp:
    # Timestamp.FromDatetime goes through a struct_time (~3 µs): this is once per message sent.
    since = moment.replace(tzinfo=UTC) - _EPOCH if moment.tzinfo is None else moment - _EPOCH
    return Timestamp(seconds=since.days * 86_400 + since.seconds, nanos=since.microseconds * 1_000)


def _datetime(stamp: Timestamp, present: bool) -> datetime:
    """The time a message says, else (none, or one no calendar holds: the article's server
    relays whatever its clients write) the time it is read."""
    if present:
        try:
            return stamp.ToDatetime(tzinfo=UTC)
        except (ValueError, OverflowError):
            pass
    return datetime.now(UTC)


def to_proto(message: Message) -> pb.ChatMessage:
    proto = pb.ChatMessage(
        sender=message.sender,
        text=message.text,
        sent_at=_timestamp(message.sent_at),
        id=message.id,
        room=message.room,
        seq=message.seq,
        epoch=message.epoch,
        recipient=message.recipient,
        action=message.action,
        reply_to=message.reply_to,
        deleted=message.deleted,
    )
    # Most messages have none of these: skip the work (this runs once per message sent).
    if message.relation is not None:
        proto.relation.CopyFrom(relation_to_proto(message.relation))
    if message.edited_at is not None:
        proto.edited_at.CopyFrom(_timestamp(message.edited_at))
    if message.reactions:
        proto.reactions.extend(
            pb.Reaction(emoji=reaction.emoji, names=reaction.names)
            for reaction in message.reactions
        )
    return proto


def from_proto(message: pb.ChatMessage, default_room: str = "") -> Message:
    return Message(
        id=message.id,
        room=message.room or ("" if message.recipient else default_room),
        sender=message.sender,
        text=message.text,
        sent_at=_datetime(message.sent_at, message.HasField("sent_at")),
        seq=message.seq,
        epoch=message.epoch,
        recipient=message.recipient,
        action=message.action,
        reply_to=message.reply_to,
        relation=relation_from_proto(message.relation) if message.HasField("relation") else None,
        edited_at=_datetime(message.edited_at, True) if message.HasField("edited_at") else None,
        deleted=message.deleted,
        reactions=tuple(
            Reaction(reaction.emoji, tuple(reaction.names)) for reaction in message.reactions
        ),
    )


def from_article_message(message: pb.ChatMessage) -> Message:
    """A message read from the article's server: only the contract's three fields. That server
    relays whatever its clients write, so the others (a room, a recipient, a position, an
    edit) are any client's say-so, and would let one make a line read as private or as
    another room's."""
    sent_at = _datetime(message.sent_at, message.HasField("sent_at"))
    return Message("", DEFAULT_ROOM, message.sender, message.text, sent_at, 0)


def relation_to_proto(relation: Relation) -> pb.Relation:
    return pb.Relation(
        kind=_KIND_TO_PROTO[relation.kind], target=relation.target, emoji=relation.emoji
    )


def relation_from_proto(relation: pb.Relation) -> Relation | None:
    """The relation, or None for a kind this side does not know (unspecified or newer): the
    caller decides whether that is bad input (a request) or a message to show plainly."""
    kind = _KIND_FROM_PROTO.get(relation.kind)
    return Relation(kind, relation.target, relation.emoji) if kind is not None else None


def position_to_proto(position: Position) -> pb.Position:
    return pb.Position(seq=position.seq, epoch=position.epoch)


def position_from_proto(position: pb.Position) -> Position:
    return Position(position.seq, position.epoch)


def event_to_proto(event: Event) -> pb.Event:
    match event:
        case Message():
            return pb.Event(message=to_proto(event))
        case PresenceChange(room, name, joined, at):
            change = _JOINED if joined else _LEFT
            presence = pb.PresenceChange(room=room, name=name, change=change, at=_timestamp(at))
            return pb.Event(presence=presence)
        case HistoryGap(room, first_seq, last_seq, reason):
            gap = pb.HistoryGap(room=room, first_seq=first_seq, last_seq=last_seq, reason=reason)
            return pb.Event(gap=gap)
        case PresenceSummary(room, joined, left, members, at):
            summary = pb.PresenceSummary(
                room=room, joined=joined, left=left, members=members, at=_timestamp(at)
            )
            return pb.Event(summary=summary)
        case RoomJoined(room, members, position, member_count, read_seq):
            done = pb.RoomJoined(
                room=room,
                members=members,
                position=position_to_proto(position),
                member_count=member_count,
                read_seq=read_seq,
            )
            return pb.Event(joined=done)
        case RoomLeft(room):
            return pb.Event(left=pb.RoomLeft(room=room))
        case SendAck(key, message, duplicate, code, reason, retry_after):
            ack = pb.SendAck(key=key, duplicate=duplicate, code=code, reason=reason)
            if message is not None:
                ack.message.CopyFrom(to_proto(message))
            if retry_after is not None:
                ack.retry_after_ms = int(retry_after * 1000) + 1
            return pb.Event(ack=ack)
        case RequestRefused(room, code, reason):
            return pb.Event(refused=pb.RequestRefused(room=room, code=code, reason=reason))
        case Typing(room, name, active, expires_in):
            typing = pb.Typing(
                room=room, name=name, active=active, expires_in_ms=round(expires_in * 1000)
            )
            return pb.Event(typing=typing)
        case ReadMarker(room, seq):
            return pb.Event(read=pb.ReadMarker(room=room, seq=seq))


def event_from_proto(event: pb.Event) -> Event | None:
    """The domain event, or None for a kind this client does not know (a newer server)."""
    kind = event.WhichOneof("kind")
    if kind == "message":
        return from_proto(event.message)
    if kind == "presence":
        p = event.presence
        return PresenceChange(p.room, p.name, p.change == _JOINED, _datetime(p.at, True))
    if kind == "gap":
        g = event.gap
        return HistoryGap(g.room, g.first_seq, g.last_seq, g.reason)
    if kind == "summary":
        s = event.summary
        return PresenceSummary(s.room, s.joined, s.left, s.members, _datetime(s.at, True))
    if kind == "joined":
        j = event.joined
        # A server that predates member_count sent every name.
        count = j.member_count or len(j.members)
        position = position_from_proto(j.position)
        return RoomJoined(j.room, tuple(j.members), position, count, j.read_seq)
    if kind == "left":
        return RoomLeft(event.left.room)
    if kind == "ack":
        a = event.ack
        message = from_proto(a.message) if a.HasField("message") else None
        retry = a.retry_after_ms / 1000 if a.retry_after_ms else None
        return SendAck(a.key, message, a.duplicate, a.code, a.reason, retry)
    if kind == "refused":
        r = event.refused
        return RequestRefused(r.room, r.code, r.reason)
    if kind == "typing":
        t = event.typing
        return Typing(t.room, t.name, t.active, t.expires_in_ms / 1000)
    if kind == "read":
        return ReadMarker(event.read.room, event.read.seq)
    return None


def message_bytes(message: Message) -> bytes:
    """Wire bytes of `message` as a ChatMessage. A message is encoded for its room's streams and
    again inside its sender's SendAck: the bytes of the last RECENT_MESSAGES are kept (by
    identity: a Message is never changed), so both use one encoding."""
    recent = _recent_messages.get(id(message))
    if recent is not None and recent[0] is message:
        return recent[1]
    data = to_proto(message).SerializeToString()
    if len(_recent_messages) >= RECENT_MESSAGES:
        _recent_messages.pop(next(iter(_recent_messages)), None)  # the oldest
    _recent_messages[id(message)] = (message, data)
    return data


RECENT_MESSAGES = 1024
_recent_messages: dict[int, tuple[Message, bytes]] = {}


def encode_chat_message(event: Event) -> bytes:
    """Wire bytes of a ChatMessage (the article's stream carries nothing else: relations are
    kept from it before they get here). The article's clients show each as a line of the one
    room they know, `[sender]: text`: a direct message (an authenticated user's stream gets
    theirs) says so in its sender, `alice → bob`, or it would read as said to everyone; an
    action (/me) too, `* alice`, or it would read as said."""
    assert isinstance(event, Message)
    if event.recipient:
        shown = replace(event, sender=f"{event.sender} → {event.recipient}")
        return to_proto(shown).SerializeToString()
    if event.action:
        return to_proto(replace(event, sender=f"* {event.sender}")).SerializeToString()
    return message_bytes(event)


def encode_event_frame(event: Event) -> bytes:
    """Wire bytes of one `events` entry of a response, field tag and length included. A message,
    and an ack that accepts one, embed its `message_bytes`: one encoding for both."""
    if isinstance(event, Message):
        data = _EVENT_MESSAGE_TAG + _length_prefixed(message_bytes(event))
    elif isinstance(event, SendAck) and event.message is not None and _only_accepts(event):
        key = event.key.encode()
        ack = b"".join(
            (
                _ACK_KEY_TAG + _length_prefixed(key) if key else b"",
                _ACK_MESSAGE_TAG + _length_prefixed(message_bytes(event.message)),
                _ACK_DUPLICATE if event.duplicate else b"",
            )
        )
        data = _EVENT_ACK_TAG + _length_prefixed(ack)
    else:
        data = event_to_proto(event).SerializeToString()
    return _EVENTS_FIELD_TAG + _length_prefixed(data)


def _only_accepts(ack: SendAck) -> bool:
    return not ack.code and not ack.reason and ack.retry_after is None


_ONE_BYTE_VARINTS = [bytes((value,)) for value in range(0x80)]


def _length_prefixed(data: bytes) -> bytes:
    return _varint(len(data)) + data


def _varint(value: int) -> bytes:
    if value < 0x80:
        return _ONE_BYTE_VARINTS[value]
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)
