"""How the JetStream engine lays history out: its URL, subjects, headers and payloads.

Pure functions and values, no I/O and no `nats` import, so the layout is readable (and
testable) on its own; `grpcchat.store.nats.store` does the talking.

- A room's messages are the subject `<stream>.room.<token>`; the token is the room name
  percent-encoded so `.`, `*`, `>`, `%`, spaces and non-ASCII never reach a subject (room names
  are validated narrower than that, but the store takes any str).
- The payload is compact JSON of the message itself (`id`, `room`, `sender`, `text`, `at` in
  microseconds since the Unix epoch, UTC, `action`, and `keyed` when it was sent with a key),
  plus, when set, `re` (the id it replies to) and `rel` (`{"k": kind, "t": target, "e":
  emoji}`). A DELETE also carries `gone`: what it erased from the stream (the target and its
  edits, each `[id, seq, at, stream seq]`, and the target's `action` and `re`), enough to show
  the tombstone and the emptied edits at their seqs once their own stream messages are gone.
  Entries stored before these fields existed read as plain messages.
- Headers carry what the store looks up without decoding payloads: `Chat-Seq` (the room's
  contiguous seq), `Chat-Latest` (the greatest `at` of the room's messages up to this one),
  `Chat-Before` (the previous entry's `Chat-Latest`, absent on a room's first: it tells
  counting whether an erased entry just before this one may still be fresh) and,
  when there are any, `Chat-Lates`: `<unknown_upto>;<seq>:<at>,...`, the messages still in the
  count window that were appended with an earlier time than some message before them (the
  clock stepped back), listed so `rooms` can count them out when they expire without reading
  the room; at most LATES_LIMIT are listed, and `unknown_upto` is the highest seq whose
  lateness is no longer listed (those are read one by one, rare as they are).
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, quote, unquote, urlsplit

from grpcchat.core.errors import StoreError
from grpcchat.core.models import Message, Relation, RelationKind
from grpcchat.core.records import record
from grpcchat.core.urls import redacted_url

DEFAULT_STREAM = "CHAT"
LATES_LIMIT = 32
SEQ = "Chat-Seq"
LATEST = "Chat-Latest"
LATES = "Chat-Lates"
BEFORE = "Chat-Before"
MSG_ID = "Nats-Msg-Id"
# JetStream's compare-and-set header, and its error codes the engine acts on: the expected
# last sequence is not the subject's last; the message to delete is not there.
EXPECTED_LAST = "Nats-Expected-Last-Subject-Sequence"
WRONG_LAST_SEQUENCE = 10071
NO_MESSAGE_FOUND = 10057
# Another compare-and-set, which JetStream checks after a message's key (unlike the one
# above): a publish expecting a last key no message has answers whether the key is known.
EXPECTED_LAST_MSG_ID = "Nats-Expected-Last-Msg-Id"
WRONG_LAST_MSG_ID = 10070
_EPOCH_START = datetime(1970, 1, 1, tzinfo=UTC)
_STREAM_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


@record
class Options:
    """What a `nats://` URL names: the servers, the stream, its replicas (None: not named; a
    new stream gets one, an existing one keeps its own)."""

    servers: list[str]
    stream: str
    replicas: int | None

    @property
    def prefix(self) -> str:
        """The subjects of the stream's rooms start with this."""
        return f"{self.stream}.room."


def parse_url(url: str) -> Options:
    """`nats://host:port[,host:port...][?stream=NAME][&replicas=N]`; StoreError if malformed."""
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # an unclosed bracket, or no IPv6 address in them
        raise StoreError(
            f"not a NATS URL: {redacted_url(url)!r} ({exc}: an IPv6 address goes in brackets, "
            "such as nats://[::1]:4222)"
        ) from None
    if parts.scheme != "nats" or not parts.netloc:
        raise StoreError(f"not a NATS URL: {redacted_url(url)!r} (use nats://host:4222)")
    try:
        query = parse_qs(parts.query, strict_parsing=bool(parts.query))
    except ValueError:
        raise StoreError(f"unreadable options in {redacted_url(url)!r}") from None
    unknown = set(query) - {"stream", "replicas"}
    if unknown:
        raise StoreError(
            f"unknown NATS store option(s) {', '.join(sorted(unknown))}: use stream, replicas"
        )
    stream = query.get("stream", [DEFAULT_STREAM])[-1]
    if not _STREAM_NAME.fullmatch(stream):
        raise StoreError(f"stream name {stream!r}: use 1-64 letters, digits, '_' or '-'")
    replicas: int | None = None
    if "replicas" in query:
        replicas_text = query["replicas"][-1]
        if not replicas_text.isdigit() or not 1 <= int(replicas_text) <= 5:
            raise StoreError(f"replicas {replicas_text!r}: use 1 to 5")
        replicas = int(replicas_text)
    servers = [f"nats://{host}" for host in parts.netloc.split(",") if host]
    for server in servers:
        _check_server(server)
    return Options(servers=servers, stream=stream, replicas=replicas)


def _check_server(server: str) -> None:
    """One server of a NATS URL: a port nats-py can use (it said "invalid connect url option"
    only once serving began), and brackets that close around an IPv6 address."""
    shown = redacted_url(server)
    try:
        parts = urlsplit(server)
        port = parts.port
    except ValueError as exc:  # a port out of range or not a number; an unclosed bracket
        raise StoreError(f"NATS server {shown!r}: {exc}") from None
    if not parts.hostname or parts.netloc.endswith(":"):
        raise StoreError(f"NATS server {shown!r}: give a host and port, such as host:4222")
    if port == 0:
        raise StoreError(f"NATS server {shown!r}: port 0 is no port to connect to")


def room_token(room: str) -> str:
    return quote(room, safe="").replace(".", "%2E")


def room_of(subject: str, prefix: str) -> str:
    return unquote(subject.removeprefix(prefix))


def to_us(moment: datetime) -> int:
    if moment.tzinfo is None:
        raise ValueError("sent_at must be timezone-aware")
    return (moment - _EPOCH_START) // timedelta(microseconds=1)


def from_us(us: int) -> datetime:
    return _EPOCH_START + timedelta(microseconds=us)


@record
class Lates:
    """The late messages of a room's count window (see the module docstring)."""

    unknown_upto: int = 0
    listed: tuple[tuple[int, int], ...] = ()

    def after(self, seq: int, sent_us: int, late: bool, window_start: int) -> Lates:
        """The lates once message `seq` is appended and the window starts at `window_start`."""
        listed = [entry for entry in self.listed if entry[0] >= window_start]
        if late:
            listed.append((seq, sent_us))
        unknown_upto = self.unknown_upto if self.unknown_upto >= window_start else 0
        if len(listed) > LATES_LIMIT:
            unknown_upto = max(unknown_upto, listed[-LATES_LIMIT - 1][0])
            listed = listed[-LATES_LIMIT:]
        return Lates(unknown_upto, tuple(listed))

    def encode(self) -> str:
        return f"{self.unknown_upto};" + ",".join(f"{seq}:{us}" for seq, us in self.listed)

    @classmethod
    def decode(cls, text: str | None) -> Lates:
        if not text:
            return cls()
        unknown_upto, _, listed = text.partition(";")
        entries = (entry.partition(":") for entry in listed.split(",") if entry)
        return cls(int(unknown_upto), tuple((int(seq), int(us)) for seq, _, us in entries))


@record
class Erased:
    """An entry a DELETE erased from the stream: where it was, and what its tombstone keeps."""

    id: str
    seq: int
    sent_us: int
    stream_seq: int


@record
class Gone:
    """What a DELETE erased: its target (and the target's `action` and `reply_to`, which the
    tombstone keeps) and the target's EDIT entries. The sender of all of them is the DELETE's."""

    target: Erased
    action: bool = False
    reply_to: str = ""
    edits: tuple[Erased, ...] = ()


@record
class Stored:
    """One message as the stream holds it: the message, where it sits, and its index headers."""

    message: Message
    stream_seq: int
    stored_us: int  # when JetStream stored it (its clock, for its own dedup window)
    sent_us: int
    latest_us: int
    lates: Lates
    keyed: bool
    # The previous entry's `latest_us` (None on a room's first, or stored before it existed).
    before_us: int | None = None
    # The `Nats-Msg-Id` it was published with ("" without a key).
    msg_id: str = ""
    gone: Gone | None = None

    @property
    def seq(self) -> int:
        return self.message.seq


def encode(
    message: Message,
    sent_us: int,
    latest_us: int,
    lates: Lates,
    keyed: bool,
    before_us: int | None = None,
    gone: Gone | None = None,
) -> tuple[bytes, dict[str, str]]:
    """The payload and headers of a message to publish."""
    body: dict[str, object] = {
        "id": message.id,
        "room": message.room,
        "sender": message.sender,
        "text": message.text,
        "at": sent_us,
    }
    if message.action:
        body["action"] = True
    if keyed:
        body["keyed"] = True
    if message.reply_to:
        body["re"] = message.reply_to
    if message.relation is not None:
        relation: dict[str, str] = {"k": message.relation.kind.value, "t": message.relation.target}
        if message.relation.emoji:
            relation["e"] = message.relation.emoji
        body["rel"] = relation
    if gone is not None:
        body["gone"] = _encode_gone(gone)
    headers = {SEQ: str(message.seq), LATEST: str(latest_us)}
    if before_us is not None:
        headers[BEFORE] = str(before_us)
    if lates.listed or lates.unknown_upto:
        headers[LATES] = lates.encode()
    payload = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
    return payload, headers


def _encode_gone(gone: Gone) -> dict[str, object]:
    def entry(erased: Erased) -> list[object]:
        return [erased.id, erased.seq, erased.sent_us, erased.stream_seq]

    body: dict[str, object] = {"t": entry(gone.target), "edits": [entry(e) for e in gone.edits]}
    if gone.action:
        body["action"] = True
    if gone.reply_to:
        body["re"] = gone.reply_to
    return body


def _decode_gone(body: dict[str, object]) -> Gone:
    def entry(value: object) -> Erased:
        if not isinstance(value, list) or len(value) != 4:
            raise ValueError("an erased entry is [id, seq, at, stream seq]")
        return Erased(str(value[0]), int(value[1]), int(value[2]), int(value[3]))

    edits = body.get("edits", [])
    if not isinstance(edits, list):
        raise ValueError("gone.edits is not a list")
    return Gone(
        target=entry(body["t"]),
        action=bool(body.get("action", False)),
        reply_to=str(body.get("re", "")),
        edits=tuple(entry(e) for e in edits),
    )


def _decode_relation(body: object) -> Relation | None:
    if body is None:
        return None
    if not isinstance(body, dict):
        raise ValueError("rel is not an object")
    return Relation(RelationKind(body["k"]), str(body["t"]), str(body.get("e", "")))


def decode(
    data: bytes, headers: dict[str, str], stream_seq: int, stored: datetime | None, epoch: str
) -> Stored:
    """A message read back from the stream; StoreError if it is not one of ours."""
    try:
        body = json.loads(data)
        sent_us = int(body["at"])
        message = Message(
            id=str(body["id"]),
            room=str(body["room"]),
            sender=str(body["sender"]),
            text=str(body["text"]),
            sent_at=from_us(sent_us),
            seq=int(headers[SEQ]),
            epoch=epoch,
            action=bool(body.get("action", False)),
            reply_to=str(body.get("re", "")),
            relation=_decode_relation(body.get("rel")),
        )
        gone = body.get("gone")
        before = headers.get(BEFORE)
        return Stored(
            message=message,
            stream_seq=stream_seq,
            stored_us=to_us(stored) if stored else sent_us,
            sent_us=sent_us,
            latest_us=int(headers[LATEST]),
            lates=Lates.decode(headers.get(LATES)),
            keyed=bool(body.get("keyed", False)),
            before_us=int(before) if before is not None else None,
            msg_id=headers.get(MSG_ID, ""),
            gone=_decode_gone(gone) if isinstance(gone, dict) else None,
        )
    except (ValueError, KeyError, TypeError, OverflowError) as exc:  # "at": 1e400, say
        raise StoreError(f"stream message {stream_seq} is not a grpcchat message: {exc}") from None
