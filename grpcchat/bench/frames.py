"""The bench's bytes: its message text (a marker a subscriber finds without decoding anything) and
the few protobuf messages it writes or reads, encoded by hand.

The bench talks to servers through raw gRPC calls (no serializers: bytes in, bytes out), so it
works the same against grpcchat and the article's Go server and never imports generated code
(the import contract keeps that to the gRPC adapters). Field numbers are those of
proto/chat/v1/chat_service.proto; tests/test_bench.py checks every encoding here against the
generated classes.

A message's text starts with a marker `<RUN/PUBLISHER/SEQ/SENT_NS>`: this run's id, the
publisher's index, its own sequence number (0, 1, 2...) and the send time as `time.time_ns()`
(the wall clock, shared by every process on one machine: run the bench on the server's machine,
or the clocks' difference is added to every latency). Any response that carries the text carries
the marker verbatim (a protobuf string is its UTF-8 bytes), whatever wraps it: one ChatMessage
of the article's stream, or a batch of events of grpcchat's Subscribe. So a subscriber finds its
deliveries with one regular-expression scan of the response bytes, and nothing else in a
response (names, presence, ids) can look like a marker of this run.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

from grpcchat.core.records import record

# The longest marker: run id (6 hex), publisher (3 digits), seq (9 digits), time_ns (19 digits),
# four separators and the brackets; a message must have room for it.
MIN_MESSAGE_SIZE = 48
_FILLER = " the quick brown fox jumps over the lazy dog" * 100

# Protobuf wire types.
_VARINT, _LEN = 0, 2


def marker_pattern(run: str) -> re.Pattern[bytes]:
    """Finds this run's data markers: groups publisher, seq, send time in ns."""
    return re.compile(b"<" + run.encode() + rb"/(\d+)/(\d+)/(\d+)>")


def ping_marker(run: str) -> bytes:
    """The text of a ping (sent while subscribers connect, never counted)."""
    return b"<" + run.encode() + b"/ping>"


def message_text(run: str, publisher: int, seq: int, size: int) -> bytes:
    """The UTF-8 text of one message, `size` bytes, its marker stamped with the time now."""
    marker = f"<{run}/{publisher}/{seq}/{time.time_ns()}>"
    return (marker + _FILLER[: size - len(marker)]).encode()


def ping_text(run: str, size: int) -> bytes:
    marker = ping_marker(run).decode()
    return (marker + _FILLER[: max(0, size - len(marker))]).encode()


# -- encoding -------------------------------------------------------------------------------


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (string, bytes or message); empty strings are left out, as
    proto3 serializers do."""
    if not payload:
        return b""
    return _varint(number << 3 | _LEN) + _varint(len(payload)) + payload


def _varint_field(number: int, value: int) -> bytes:
    return _varint(number << 3 | _VARINT) + _varint(value) if value else b""


def chat_message(sender: str, text: bytes) -> bytes:
    """chat.v1.ChatMessage{sender, text, sent_at: now}, as the article's Go client writes it
    (`SentAt: timestamppb.Now()`)."""
    now = time.time_ns()
    stamp = _varint_field(1, now // 1_000_000_000) + _varint_field(2, now % 1_000_000_000)
    return _field(1, sender.encode()) + _field(2, text) + _field(3, stamp)


def send_request(text: bytes, room: str, key: str, sender: str = "") -> bytes:
    """chat.v1.SendRequest{sender, text, room, key}."""
    return (
        _field(1, sender.encode())
        + _field(2, text)
        + _field(3, room.encode())
        + _field(4, key.encode())
    )


def subscribe_request(name: str, room: str) -> bytes:
    """chat.v1.SubscribeRequest{name, room}: live only, no history."""
    return _field(1, name.encode()) + _field(2, room.encode())


def hello(name: str) -> bytes:
    """chat.v1.ConnectRequest{hello: {name}}."""
    return _field(1, _field(1, name.encode()))


def send_on_session(text: bytes, room: str, key: str) -> bytes:
    """chat.v1.ConnectRequest{send: SendRequest{text, room, key}} (the session names the sender);
    with an empty key, a probe: the server answers it with a refusing SendAck and posts nothing."""
    return wrap_sends([send_request(text, room, key)])


def wrap_sends(requests: list[bytes]) -> bytes:
    """chat.v1.ConnectRequest carrying SendRequests: one as `send`, several as `sends`."""
    if len(requests) == 1:
        # A SendRequest with every field empty is still a `send`: the oneof member is written.
        return _varint(4 << 3 | _LEN) + _varint(len(requests[0])) + requests[0]
    batch = b"".join(_varint(1 << 3 | _LEN) + _varint(len(r)) + r for r in requests)
    return _varint(7 << 3 | _LEN) + _varint(len(batch)) + batch


# -- decoding ---------------------------------------------------------------------------------


def _read_varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, at
        shift += 7


def fields(data: bytes) -> Iterator[tuple[int, int | bytes]]:
    """(field number, value) of one message's top-level fields: an int for varints, bytes for
    length-delimited ones; fixed-width fields are skipped. Raises ValueError on bad input."""
    at, end = 0, len(data)
    try:
        while at < end:
            tag, at = _read_varint(data, at)
            number, kind = tag >> 3, tag & 7
            if kind == _VARINT:
                value, at = _read_varint(data, at)
                yield number, value
            elif kind == _LEN:
                size, at = _read_varint(data, at)
                if at + size > end:
                    raise ValueError("truncated field")
                yield number, data[at : at + size]
                at += size
            elif kind == 1:
                at += 8
            elif kind == 5:
                at += 4
            else:
                raise ValueError(f"unsupported wire type {kind}")
    except IndexError:
        raise ValueError("truncated varint") from None


def _text(value: int | bytes) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else ""


@record
class Ack:
    """A chat.v1.SendAck: `code` empty when the message was accepted."""

    key: str
    code: str
    reason: str
    retry_after_ms: int


@record
class Refused:
    """A chat.v1.RequestRefused: the server did not understand or allow a request."""

    room: str
    code: str
    reason: str


_EVENT_REFUSED, _EVENT_ACK = 6, 8


def session_events(response: bytes) -> Iterator[Ack | Refused]:
    """The acks and refusals in one chat.v1.ConnectResponse; other events are skipped."""
    for number, event in fields(response):
        if number != 1 or not isinstance(event, bytes):
            continue
        for kind, body in fields(event):
            if not isinstance(body, bytes):
                continue
            if kind == _EVENT_ACK:
                ack = dict(fields(body))
                retry = ack.get(6, 0)
                yield Ack(
                    _text(ack.get(1, b"")),
                    _text(ack.get(4, b"")),
                    _text(ack.get(5, b"")),
                    retry if isinstance(retry, int) else 0,
                )
            elif kind == _EVENT_REFUSED:
                refused = dict(fields(body))
                yield Refused(
                    _text(refused.get(1, b"")),
                    _text(refused.get(2, b"")),
                    _text(refused.get(3, b"")),
                )
