"""The rules for names, rooms and message text, enforced by the server and checked early by
the client so a person gets the same clear message either way."""

from __future__ import annotations

import re
import unicodedata

from grpcchat.core.errors import InvalidInput
from grpcchat.core.models import DEFAULT_ROOM

MAX_NAME_LENGTH = 32
MAX_TEXT_LENGTH = 4096
MAX_ROOM_LENGTH = 32
MAX_EPOCH_LENGTH = 64
# The longest idempotency key a store's `append` is handed, in UTF-8 bytes.
MAX_KEY_BYTES = 128

_ROOM_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]*")

# Control characters (Unicode category Cc): exactly U+0000-U+001F and U+007F-U+009F, a set
# Unicode's stability policy never changes.
_CONTROL = r"\x00-\x1f\x7f-\x9f"
# Format characters (Cf) as of this Unicode version, as code point ranges. Another version
# (another Python) scans `unicodedata` once at import instead, so the rule is always exactly
# "category Cf" of the running Python (tests/test_validation.py checks this table against it).
_FORMAT_UNICODE_VERSION = "14.0.0"
_FORMAT_RANGES = (
    (0x00AD, 0x00AD), (0x0600, 0x0605), (0x061C, 0x061C), (0x06DD, 0x06DD), (0x070F, 0x070F),
    (0x0890, 0x0891), (0x08E2, 0x08E2), (0x180E, 0x180E), (0x200B, 0x200F), (0x202A, 0x202E),
    (0x2060, 0x2064), (0x2066, 0x206F), (0xFEFF, 0xFEFF), (0xFFF9, 0xFFFB), (0x110BD, 0x110BD),
    (0x110CD, 0x110CD), (0x13430, 0x13438), (0x1BCA0, 0x1BCA3), (0x1D173, 0x1D17A),
    (0xE0001, 0xE0001), (0xE0020, 0xE007F),
)  # fmt: skip


def _format_ranges() -> tuple[tuple[int, int], ...]:
    """The code point ranges of category Cf in the running Python's `unicodedata`."""
    if unicodedata.unidata_version == _FORMAT_UNICODE_VERSION:
        return _FORMAT_RANGES
    ranges: list[tuple[int, int]] = []
    for code in range(0x110000):
        if unicodedata.category(chr(code)) == "Cf":
            if ranges and ranges[-1][1] == code - 1:
                ranges[-1] = (ranges[-1][0], code)
            else:
                ranges.append((code, code))
    return tuple(ranges)


def _char_class(ranges: tuple[tuple[int, int], ...]) -> str:
    return "".join(f"\\U{low:08x}-\\U{high:08x}" for low, high in ranges)


# Lone surrogates are what Python makes of bytes that are not UTF-8 in a command-line argument
# or on stdin (surrogateescape): they cannot go on the wire, so they are refused with the other
# forbidden characters, with a message that says so.
_SURROGATES = r"\ud800-\udfff"
# Line breaks and tabs are part of ordinary multi-line text; every other control character can
# rewrite a terminal (cursor moves, colour, bells), so it never reaches another user's screen.
# One regex search each: the scan runs in C, never a Python step per character.
_FORBIDDEN_IN_TEXT = re.compile(f"[\\x00-\\x08\\x0b-\\x1f\\x7f-\\x9f{_SURROGATES}]")
# Names also refuse format characters (Cf): invisible joiners and bidi overrides let one name
# pass for another. And what makes a name look empty, like another, or two lines: the letters
# that show as nothing (the Hangul fillers, the blank braille pattern), and the line and
# paragraph separators (Zl, Zp: exactly these two, by Unicode's stability policy).
_NAME_BLANKS = "\u115f\u1160\u3164\uffa0\u2800\u2028\u2029"
# And the rest of Unicode's default-ignorable code points (shown as nothing when not
# understood) that are not format characters: variation selectors, the combining grapheme
# joiner, the Mongolian and Khmer ones, and the unassigned ones kept for more of the same.
# `alice` followed by any of them read as alice everywhere names are shown.
_IGNORABLES = "\u034f\u17b4\u17b5\u180b-\u180f\u2065\ufe00-\ufe0f\ufff0-\ufff8\U000e0000-\U000e0fff"
_IGNORABLE = re.compile(f"[{_IGNORABLES}]")
_FORBIDDEN_IN_NAME = re.compile(
    f"[{_CONTROL}{_char_class(_format_ranges())}{_SURROGATES}{_NAME_BLANKS}{_IGNORABLES}]"
)
_SURROGATE = re.compile(f"[{_SURROGATES}]")
# An idempotency key is an identifier, like a name, not text to show: no control characters
# (U+0000 would not even survive SQLite's JSON functions, with which a group's keys are looked up).
_FORBIDDEN_IN_KEY = re.compile(f"[{_CONTROL}{_SURROGATES}]")


def _not_utf8(found: re.Match[str], what: str) -> InvalidInput | None:
    """The error for a forbidden character that is a lone surrogate (see _SURROGATES)."""
    if "\ud800" <= found.group() <= "\udfff":
        return InvalidInput(f"{what} is not valid UTF-8")
    return None


def check_name(name: str, what: str = "name") -> str:
    """Return `name` stripped of surrounding blanks, or raise InvalidInput saying what it is
    (`what`: "recipient" for a direct message's, so that its sender's name is not blamed)."""
    name = name.strip()
    if not name:
        raise InvalidInput(f"{what} must not be empty")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidInput(f"{what} is {len(name)} characters long; the limit is {MAX_NAME_LENGTH}")
    if found := _FORBIDDEN_IN_NAME.search(name):
        if found.group() in _NAME_BLANKS:
            raise InvalidInput(f"{what} must not contain blank letters or line separators")
        if unicodedata.category(found.group()) == "Cf":
            raise InvalidInput(
                f"{what} must not contain invisible format characters "
                f"(U+{ord(found.group()):04X}: joiners, bidi controls and the like)"
            )
        if _IGNORABLE.fullmatch(found.group()):
            raise InvalidInput(
                f"{what} must not contain characters that show as nothing "
                f"(U+{ord(found.group()):04X}: variation selectors and the like)"
            )
        raise _not_utf8(found, what) or InvalidInput(f"{what} must not contain control characters")
    if unicodedata.category(name[0]).startswith("M"):
        raise InvalidInput(f"{what} must not start with a combining mark")
    return name


def check_room(room: str) -> str:
    """Return the room name (the default room for an empty one), or raise InvalidInput."""
    if not room:
        return DEFAULT_ROOM
    if len(room) > MAX_ROOM_LENGTH:
        raise InvalidInput(
            f"room name is {len(room)} characters long; the limit is {MAX_ROOM_LENGTH}"
        )
    if not _ROOM_PATTERN.fullmatch(room):
        raise InvalidInput(
            f"room name {room!r} is not allowed: use lowercase letters, digits, '-' and '_', "
            "starting with a letter or digit"
        )
    return room


def check_key(key: str) -> str:
    """Return an idempotency key of at most MAX_KEY_BYTES (UTF-8) without control characters, or
    raise InvalidInput."""
    if found := _FORBIDDEN_IN_KEY.search(key):
        raise _not_utf8(found, "idempotency key") or InvalidInput(
            "idempotency key must not contain control characters"
        )
    size = len(key.encode("utf-8"))
    if size > MAX_KEY_BYTES:
        raise InvalidInput(f"idempotency key is {size} bytes long; the limit is {MAX_KEY_BYTES}")
    return key


def check_epoch(epoch: str) -> str:
    """Return an epoch a client sent back (one this server handed out is 32 hex digits)."""
    if len(epoch) > MAX_EPOCH_LENGTH:
        raise InvalidInput(
            f"epoch is {len(epoch)} characters long; the limit is {MAX_EPOCH_LENGTH}"
        )
    return epoch


def check_uint(value: int, what: str, most: int = 2**63 - 1) -> int:
    """`value` as a request's unsigned field takes it (a seq: what a store's integers hold),
    else InvalidInput (protobuf's own ValueError names no field)."""
    if not 0 <= value <= most:
        raise InvalidInput(f"{what} must be 0 to {most}, not {value}")
    return value


def check_page_token(token: str, max_length: int) -> str:
    """A page token is the last name of the previous page, so never longer than a name."""
    if len(token) > max_length:
        raise InvalidInput("page token is not one this server handed out")
    return token


def check_text(text: str) -> str:
    """Return `text` unchanged, or raise InvalidInput."""
    if not text.strip():
        raise InvalidInput("message text must not be empty")
    if len(text) > MAX_TEXT_LENGTH:
        raise InvalidInput(
            f"message is {len(text)} characters long; the limit is {MAX_TEXT_LENGTH}"
        )
    if found := _FORBIDDEN_IN_TEXT.search(text):
        raise _not_utf8(found, "message text") or InvalidInput(
            "message must not contain control characters (other than newline and tab)"
        )
    return text


# A reaction key: an emoji (several code points with joiners and modifiers) or a short word.
MAX_EMOJI_BYTES = 64
# Emoji sequences need the zero-width joiner and tag characters, so not every invisible format
# character is refused as in names: only the ones that reorder or hide text around them.
_FORBIDDEN_IN_EMOJI = re.compile(
    r"[\s\x00-\x1f\x7f-\x9f\u061c\u200b\u200e\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff]"
)
# A new reaction must also show: not the letters that show as nothing (as in names), and not
# starting with a joiner, a variation selector or a combining mark (alone, one shows as
# nothing, or lands on the text before it). One stored before that rule can be taken back.
_BLANK_IN_EMOJI = re.compile(f"[{_NAME_BLANKS}]")
_INVISIBLE_ALONE = frozenset({"Cf", "Mn", "Mc", "Me"})
# A message id as the server hands them out (32 hex digits); a little room for other engines.
MAX_MESSAGE_ID_LENGTH = 64


def check_emoji(emoji: str, *, new: bool = True) -> str:
    """Return a reaction key of 1..MAX_EMOJI_BYTES UTF-8 bytes without blanks or control
    characters (a `new` one: that shows as something), or raise InvalidInput."""
    if not emoji:
        raise InvalidInput("a reaction needs an emoji")
    if _SURROGATE.search(emoji):
        raise InvalidInput("reaction is not valid UTF-8")
    size = len(emoji.encode("utf-8"))
    if size > MAX_EMOJI_BYTES:
        raise InvalidInput(f"reaction is {size} bytes long; the limit is {MAX_EMOJI_BYTES}")
    if _FORBIDDEN_IN_EMOJI.search(emoji) or (new and _BLANK_IN_EMOJI.search(emoji)):
        raise InvalidInput(
            "a reaction must not contain blanks, control or text-direction characters"
        )
    if new and unicodedata.category(emoji[0]) in _INVISIBLE_ALONE:
        raise InvalidInput("a reaction must not start with a joiner or combining mark")
    return emoji


def check_message_id(message_id: str) -> str:
    """Return the id of a message to edit, delete, react or reply to, or raise InvalidInput."""
    if not message_id:
        raise InvalidInput("name the message: its id is empty")
    if len(message_id) > MAX_MESSAGE_ID_LENGTH or _FORBIDDEN_IN_TEXT.search(message_id):
        raise InvalidInput(f"{message_id[:MAX_MESSAGE_ID_LENGTH]!r} is not a message id")
    return message_id
