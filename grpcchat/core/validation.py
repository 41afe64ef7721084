"""The rules for names, rooms and message text, enforced by the server and checked early by
the client so a person gets the same clear message either way."""

from __future__ import annotations

import re
import unicodedata

from grpcchat.core.errors import InvalidInput
from grpcchat.core.history import MAX_KEY_BYTES
from grpcchat.core.models import DEFAULT_ROOM

MAX_NAME_LENGTH = 32
MAX_TEXT_LENGTH = 4096
MAX_ROOM_LENGTH = 32
MAX_EPOCH_LENGTH = 64

_ROOM_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]*")
# Line breaks and tabs are part of ordinary multi-line text; every other control character can
# rewrite a terminal (cursor moves, colour, bells), so it never reaches another user's screen.
_ALLOWED_IN_TEXT = frozenset("\n\t")


def _has_control(value: str, categories: tuple[str, ...], allowed: frozenset[str]) -> bool:
    return any(unicodedata.category(ch) in categories and ch not in allowed for ch in value)


def check_name(name: str) -> str:
    """Return `name` stripped of surrounding blanks, or raise InvalidInput."""
    name = name.strip()
    if not name:
        raise InvalidInput("name must not be empty")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidInput(f"name is {len(name)} characters long; the limit is {MAX_NAME_LENGTH}")
    # Names also refuse format characters (Cf): invisible joiners and bidi overrides let one
    # name pass for another.
    if _has_control(name, ("Cc", "Cf"), frozenset()):
        raise InvalidInput("name must not contain control characters")
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
    """Return an idempotency key of at most MAX_KEY_BYTES (UTF-8), or raise InvalidInput."""
    size = len(key.encode("utf-8", "surrogatepass"))
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
    if _has_control(text, ("Cc",), _ALLOWED_IN_TEXT):
        raise InvalidInput(
            "message must not contain control characters (other than newline and tab)"
        )
    return text
