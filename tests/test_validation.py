"""The pure seams: name/room/text rules and the batch codec, checked with Hypothesis."""

from __future__ import annotations

import re
import sys
import time
import unicodedata
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import given
from hypothesis import strategies as st

from grpcchat.cli.lines import local_time
from grpcchat.core import validation
from grpcchat.core.errors import InvalidInput
from grpcchat.core.models import Envelope, Message, Reaction, Relation, RelationKind, SendAck
from grpcchat.core.validation import (
    MAX_NAME_LENGTH,
    MAX_ROOM_LENGTH,
    MAX_TEXT_LENGTH,
    check_key,
    check_name,
    check_room,
    check_text,
)
from grpcchat.gen.chat.v1 import chat_service_pb2 as pb
from grpcchat.wire import codec

room_names = st.from_regex(r"[a-z0-9][a-z0-9_-]{0,31}", fullmatch=True)
printable = st.text(
    st.characters(
        blacklist_categories=("Cc", "Cf", "Cs", "Zl", "Zp", "Mn", "Mc", "Me", "Cn"),
        blacklist_characters="\u115f\u1160\u3164\uffa0\u2800",
    ),
    min_size=1,
)


@given(room_names)
def test_valid_rooms_pass_unchanged(room: str) -> None:
    assert check_room(room) == room


@given(st.text(min_size=1))
def test_any_accepted_room_matches_the_documented_rule(room: str) -> None:
    try:
        accepted = check_room(room)
    except InvalidInput:
        return
    assert len(accepted) <= MAX_ROOM_LENGTH
    assert re.fullmatch(r"[a-z0-9][a-z0-9_-]*", accepted)


def test_empty_room_is_the_lobby() -> None:
    assert check_room("") == "lobby"


@given(printable.filter(lambda s: s.strip() and len(s.strip()) <= MAX_NAME_LENGTH))
def test_printable_names_are_accepted_stripped(name: str) -> None:
    assert check_name(name) == name.strip()


@given(st.text(), st.sampled_from(["\x00", "\x1b", "\x07", "\u202e", "\u200b", "\n"]))
def test_names_with_control_or_format_characters_are_refused(prefix: str, bad: str) -> None:
    with pytest.raises(InvalidInput):
        check_name(prefix + "x" + bad + "y")


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("\u3164", "blank letters"),  # HANGUL FILLER: a name that shows as nothing
        ("bob\u2800", "blank letters"),  # BRAILLE PATTERN BLANK: "bob" and one more
        ("bob\u2028alice", "line separators"),
        ("\u0301\u0301", "combining mark"),  # accents on nothing
        # Each of these after "alice" read as alice, with auth on too.
        ("alice\ufe00", "show as nothing"),  # a variation selector
        ("alice\u034f", "show as nothing"),  # the combining grapheme joiner
        ("alice\u180b", "show as nothing"),  # a Mongolian variation selector
        ("alice\U000e0100", "show as nothing"),  # an ideographic variation selector
    ],
)
def test_names_that_look_empty_like_another_or_two_lines_are_refused(name: str, why: str) -> None:
    with pytest.raises(InvalidInput, match=why):
        check_name(name)


@given(st.text(st.characters(blacklist_categories=("Cc", "Cs")), max_size=32))
def test_keys_without_control_characters_pass_unchanged(key: str) -> None:
    assert check_key(key) == key


@pytest.mark.parametrize(
    ("key", "why"),
    [
        ("a\x00b", "control characters"),  # SQLite's JSON functions would cut it short
        ("a\nb", "control characters"),
        ("a\x9bb", "control characters"),
        ("a\udcffb", "not valid UTF-8"),
    ],
)
def test_keys_with_control_characters_are_refused(key: str, why: str) -> None:
    with pytest.raises(InvalidInput, match=f"idempotency key .*{why}"):
        check_key(key)


@given(st.text(max_size=MAX_TEXT_LENGTH))
def test_text_is_accepted_exactly_when_it_follows_the_rules(text: str) -> None:
    allowed = bool(text.strip()) and not any(
        (ord(c) < 32 and c not in "\n\t") or 0x7F <= ord(c) < 0xA0 or 0xD800 <= ord(c) < 0xE000
        for c in text
    )
    if allowed:
        assert check_text(text) == text
    else:
        with pytest.raises(InvalidInput):
            check_text(text)


# -- the regex checks against the unicodedata definition they replaced -----------------------


def _first_forbidden(value: str, categories: tuple[str, ...], allowed: frozenset[str]) -> str:
    """The definition before the regex: each character's category, one at a time; the
    category of the first one refused ("" if none is)."""
    for ch in value:
        if (category := unicodedata.category(ch)) in categories and ch not in allowed:
            return category
    return ""


# Unicode's Default_Ignorable_Code_Point (DerivedCoreProperties.txt, 14.0 and 15.x alike):
# what a renderer shows as nothing when it does not know better.
DEFAULT_IGNORABLE = (
    (0x00AD, 0x00AD), (0x034F, 0x034F), (0x061C, 0x061C), (0x115F, 0x1160), (0x17B4, 0x17B5),
    (0x180B, 0x180F), (0x200B, 0x200F), (0x202A, 0x202E), (0x2060, 0x206F), (0x3164, 0x3164),
    (0xFE00, 0xFE0F), (0xFEFF, 0xFEFF), (0xFFA0, 0xFFA0), (0xFFF0, 0xFFF8), (0x1BCA0, 0x1BCA3),
    (0x1D173, 0x1D17A), (0xE0000, 0xE0FFF),
)  # fmt: skip


def _default_ignorable(ch: str) -> bool:
    return any(low <= ord(ch) <= high for low, high in DEFAULT_IGNORABLE)


def reference_check_name(name: str) -> str:
    name = name.strip()
    if not name:
        raise InvalidInput("name must not be empty")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidInput(f"name is {len(name)} characters long; the limit is {MAX_NAME_LENGTH}")
    for ch in name:
        category = unicodedata.category(ch)
        if category == "Cs":  # a lone surrogate: bytes that were not UTF-8
            raise InvalidInput("name is not valid UTF-8")
        if category == "Cc":
            raise InvalidInput("name must not contain control characters")
        if category == "Cf":
            raise InvalidInput(
                "name must not contain invisible format characters "
                f"(U+{ord(ch):04X}: joiners, bidi controls and the like)"
            )
        if category in ("Zl", "Zp") or ch in "\u115f\u1160\u3164\uffa0\u2800":
            raise InvalidInput("name must not contain blank letters or line separators")
        if _default_ignorable(ch):
            raise InvalidInput(
                "name must not contain characters that show as nothing "
                f"(U+{ord(ch):04X}: variation selectors and the like)"
            )
    if unicodedata.category(name[0]).startswith("M"):
        raise InvalidInput("name must not start with a combining mark")
    return name


def reference_check_text(text: str) -> str:
    if not text.strip():
        raise InvalidInput("message text must not be empty")
    if len(text) > MAX_TEXT_LENGTH:
        raise InvalidInput(
            f"message is {len(text)} characters long; the limit is {MAX_TEXT_LENGTH}"
        )
    if refused := _first_forbidden(text, ("Cc", "Cs"), frozenset("\n\t")):
        if refused == "Cs":
            raise InvalidInput("message text is not valid UTF-8")
        raise InvalidInput(
            "message must not contain control characters (other than newline and tab)"
        )
    return text


def outcome(check: Callable[[str], str], value: str) -> str | tuple[str, str]:
    try:
        return check(value)
    except InvalidInput as error:
        return ("refused", str(error))


# Every control and format character, blanks, and characters from every plane (surrogates too).
SPECIAL = [
    chr(c) for c in range(sys.maxunicode + 1) if unicodedata.category(chr(c)) in {"Cc", "Cf"}
]
any_character = st.one_of(
    st.characters(blacklist_categories=()),
    st.characters(min_codepoint=0x10000, blacklist_categories=()),
    st.sampled_from(SPECIAL),
    st.sampled_from(" \t\n\r\u00a0\u2028\u2029\u3000\u3164\u2800\u0301\u034f\ufe0f\U000e0100"),
    st.characters(max_codepoint=0x7F),
)
mixed_text = st.text(any_character, max_size=MAX_TEXT_LENGTH + 2)


@given(mixed_text)
def test_text_check_matches_the_unicodedata_definition(text: str) -> None:
    assert outcome(check_text, text) == outcome(reference_check_text, text)


@given(st.text(any_character, max_size=MAX_NAME_LENGTH + 3))
def test_name_check_matches_the_unicodedata_definition(name: str) -> None:
    assert outcome(check_name, name) == outcome(reference_check_name, name)


def test_the_character_classes_match_unicodedata_on_every_code_point() -> None:
    wrong = [
        hex(code)
        for code in range(sys.maxunicode + 1)
        if (
            bool(validation._FORBIDDEN_IN_NAME.search(ch := chr(code)))
            != (
                unicodedata.category(ch) in {"Cc", "Cf", "Cs", "Zl", "Zp"}
                or ch in "\u115f\u1160\u3164\uffa0\u2800"
                or _default_ignorable(ch)
            )
            or bool(validation._FORBIDDEN_IN_TEXT.search(ch))
            != (unicodedata.category(ch) in {"Cc", "Cs"} and ch not in "\n\t")
        )
    ]
    assert wrong == []


def test_text_length_limit() -> None:
    assert check_text("x" * MAX_TEXT_LENGTH)
    with pytest.raises(InvalidInput, match=str(MAX_TEXT_LENGTH)):
        check_text("x" * (MAX_TEXT_LENGTH + 1))


messages = st.builds(
    Message,
    id=st.text(max_size=40),
    room=room_names,
    sender=printable,
    text=st.text(min_size=1, max_size=300),
    sent_at=st.datetimes(timezones=st.just(UTC), min_value=datetime(1971, 1, 1)),
    seq=st.integers(0, 2**63),
)


@given(st.lists(messages, min_size=1, max_size=20))
def test_a_batch_of_framed_events_parses_as_one_subscribe_response(batch: list[Message]) -> None:
    data = b"".join(codec.encode_event_frame(m) for m in batch)
    response = pb.SubscribeResponse.FromString(data)
    assert [codec.from_proto(e.message) for e in response.events] == batch


conversation_messages = st.builds(
    Message,
    id=st.text(max_size=40),
    room=room_names,
    sender=printable,
    text=st.text(max_size=300),
    sent_at=st.datetimes(timezones=st.just(UTC), min_value=datetime(1971, 1, 1)),
    seq=st.integers(0, 2**63),
    epoch=st.text(max_size=20),
    action=st.booleans(),
    reply_to=st.text(max_size=40),
    relation=st.none() | st.builds(Relation, st.sampled_from(RelationKind), st.text(max_size=40)),
    edited_at=st.none() | st.datetimes(timezones=st.just(UTC), min_value=datetime(1971, 1, 1)),
    deleted=st.booleans(),
    reactions=st.lists(st.builds(Reaction, st.text(max_size=8), st.just(("bob",))), max_size=3).map(
        tuple
    ),
)
acks = st.builds(
    SendAck,
    key=st.text(max_size=20),
    message=st.none() | conversation_messages,
    duplicate=st.booleans(),
    code=st.sampled_from(["", "INVALID_ARGUMENT"]),
    reason=st.text(max_size=20),
    retry_after=st.none() | st.floats(0, 60),
)


@given(conversation_messages | acks)
def test_the_hand_built_frames_are_the_bytes_protobuf_writes(event: Message | SendAck) -> None:
    """Messages and accepting acks are framed around `message_bytes` rather than built as
    protobuf objects: the bytes must be exactly protobuf's."""
    data = codec.event_to_proto(event).SerializeToString()
    assert codec.encode_event_frame(event) == b"\x0a" + codec._varint(len(data)) + data


def test_recent_message_bytes_belong_to_that_very_message() -> None:
    """Kept by identity: a new message (which may reuse a dead one's id()) is encoded afresh,
    and only the last RECENT_MESSAGES are kept."""
    at = datetime(2026, 1, 1, tzinfo=UTC)
    for n in range(codec.RECENT_MESSAGES * 2):
        message = Message(
            id=f"m{n}", room="lobby", sender="ann", text=f"text {n}", sent_at=at, seq=n
        )
        assert codec.message_bytes(message) == codec.to_proto(message).SerializeToString()
        assert codec.message_bytes(message) is codec.message_bytes(message)
    assert len(codec._recent_messages) <= codec.RECENT_MESSAGES


@given(messages)
def test_an_envelope_encodes_once_per_codec(message: Message) -> None:
    calls: list[Message] = []

    def counting(m: Message) -> bytes:
        calls.append(m)
        return codec.encode_chat_message(m)

    envelope = Envelope(message)
    first = envelope.encoded(counting)
    assert all(envelope.encoded(counting) is first for _ in range(5))
    assert calls == [message]
    assert pb.ChatMessage.FromString(first).text == message.text


@pytest.mark.parametrize(
    "stamp",
    [Timestamp(seconds=2**62), Timestamp(seconds=-(2**62)), Timestamp(seconds=5, nanos=-1)],
)
def test_a_time_no_calendar_holds_reads_as_the_time_it_is_read(stamp: Timestamp) -> None:
    """The article's server relays whatever its clients write: such a time ended every
    `join` on it with a traceback."""
    before = datetime.now(UTC)
    message = codec.from_proto(pb.ChatMessage(sender="x", text="y", sent_at=stamp, edited_at=stamp))
    assert message.edited_at is not None
    assert before <= message.sent_at <= datetime.now(UTC)
    assert before <= message.edited_at <= datetime.now(UTC)


@pytest.mark.parametrize("emoji", ["\u200d", "\ufe0f", "\u0301+", "\u3164"])
def test_a_reaction_that_shows_as_nothing_is_refused_but_can_be_taken_back(emoji: str) -> None:
    """Refused as a new reaction; one stored before the rule can still be taken back."""
    with pytest.raises(InvalidInput):
        validation.check_emoji(emoji)
    assert validation.check_emoji(emoji, new=False) == emoji


def test_a_message_from_another_day_shows_its_date() -> None:
    """Two messages 48 hours apart both showed as 04:29:59 in `history` and `join`."""
    now = datetime(2026, 12, 8, 4, 30, tzinfo=UTC)
    old, recent = now - timedelta(hours=48), now - timedelta(hours=2)
    assert local_time(old, now=now) == f"{old.astimezone():%Y-%m-%d %H:%M:%S}"
    assert local_time(recent, now=now) == f"{recent.astimezone():%H:%M:%S}"


@pytest.mark.parametrize("zone", ["America/New_York", "Asia/Tokyo"])
def test_the_calendars_first_and_last_seconds_show_in_any_zone(
    zone: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In range for protobuf, but no local zone west (or east) of UTC holds them: showing one
    the article's server relayed ended `join` with a traceback."""
    monkeypatch.setenv("TZ", zone)
    time.tzset()
    try:
        for seconds in (-62135596800, 253402300799):
            message = codec.from_proto(pb.ChatMessage(sent_at=Timestamp(seconds=seconds)))
            shown = local_time(message.sent_at, now=message.sent_at)
            assert re.fullmatch(r"\d\d:\d\d:\d\d", shown)
            dated = local_time(message.sent_at)  # (the first second: dated, long ago)
            assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", dated) or seconds > 0
    finally:
        monkeypatch.undo()
        time.tzset()
