"""Protobuf <-> domain translation. The only module besides the gRPC adapters that imports
generated code."""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp

from grpcchat.gen.chat.v1 import chat_service_pb2 as pb
from grpcchat.models import Message

# Tag of field 1 (`events`, length-delimited) of SubscribeResponse: a response is just a run of
# framed events, so a batch is built by concatenating events encoded once each.
_EVENTS_FIELD_TAG = b"\x0a"


def to_proto(message: Message) -> pb.ChatMessage:
    sent_at = Timestamp()
    sent_at.FromDatetime(message.sent_at)
    return pb.ChatMessage(
        sender=message.sender,
        text=message.text,
        sent_at=sent_at,
        id=message.id,
        room=message.room,
        seq=message.seq,
    )


def from_proto(message: pb.ChatMessage, default_room: str = "") -> Message:
    sent_at = (
        message.sent_at.ToDatetime(tzinfo=UTC) if message.HasField("sent_at") else datetime.now(UTC)
    )
    return Message(
        id=message.id,
        room=message.room or default_room,
        sender=message.sender,
        text=message.text,
        sent_at=sent_at,
        seq=message.seq,
    )


def encode_chat_message(message: Message) -> bytes:
    """Wire bytes of a ChatMessage: one legacy Chat stream response."""
    return to_proto(message).SerializeToString()


def encode_event_frame(message: Message) -> bytes:
    """Wire bytes of one `events` entry of a SubscribeResponse, field tag and length included."""
    event = pb.Event(message=to_proto(message)).SerializeToString()
    return _EVENTS_FIELD_TAG + _varint(len(event)) + event


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)
