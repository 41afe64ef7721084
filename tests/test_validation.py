"""The pure seams: name/room/text rules and the batch codec, checked with Hypothesis."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from grpcchat.core.errors import InvalidInput
from grpcchat.core.models import Envelope, Message
from grpcchat.core.validation import (
    MAX_NAME_LENGTH,
    MAX_ROOM_LENGTH,
    MAX_TEXT_LENGTH,
    check_name,
    check_room,
    check_text,
)
from grpcchat.gen.chat.v1 import chat_service_pb2 as pb
from grpcchat.wire import codec

room_names = st.from_regex(r"[a-z0-9][a-z0-9_-]{0,31}", fullmatch=True)
printable = st.text(st.characters(blacklist_categories=("Cc", "Cf", "Cs")), min_size=1)


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


@given(st.text(max_size=MAX_TEXT_LENGTH))
def test_text_is_accepted_exactly_when_it_follows_the_rules(text: str) -> None:
    allowed = bool(text.strip()) and not any(
        (ord(c) < 32 and c not in "\n\t") or 0x7F <= ord(c) < 0xA0 for c in text
    )
    if allowed:
        assert check_text(text) == text
    else:
        with pytest.raises(InvalidInput):
            check_text(text)


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
