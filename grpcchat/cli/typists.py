"""Typing notices in `join`: who is typing where, until each notice expires (shown in the
prompt's bottom toolbar, never in the scrollback), and when to tell the room that the user is
typing: at most every TYPING_REFRESH seconds while they compose, and "stopped" once they send
or clear the line."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from grpcchat.core.models import Typing

# A notice lasts `Typing.expires_in` (6 s): refreshing it every 3 s keeps it alive.
TYPING_REFRESH = 3.0
# Lines that are messages, though they start with a slash.
_COMPOSING_COMMANDS = ("//", "/me ", "/reply ", "/edit ", "/msg ")


class Typists:
    """Who is typing in each room, as the notices received say."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        # room -> name -> when the notice expires (clock time), in the order they started.
        self._until: dict[str, dict[str, float]] = {}

    def update(self, notice: Typing) -> None:
        typing = self._until.setdefault(notice.room, {})
        if notice.active:
            typing[notice.name] = self._clock() + notice.expires_in
        else:
            typing.pop(notice.name, None)

    def stopped(self, room: str, name: str) -> bool:
        """`name` posted in `room`: whatever they were typing is sent. Whether that changed
        anything."""
        return self._until.get(room, {}).pop(name, None) is not None

    def names(self, room: str) -> list[str]:
        """Who is typing in `room` now."""
        self._forget_expired()
        return list(self._until.get(room, {}))

    def next_expiry(self) -> float | None:
        """Seconds until the next live notice expires, in any room; None when none is live
        (an expired one is forgotten here, so it never asks for a redraw that changes
        nothing)."""
        self._forget_expired()
        ends = [until for typing in self._until.values() for until in typing.values()]
        return min(ends) - self._clock() if ends else None

    def _forget_expired(self) -> None:
        now = self._clock()
        for room, typing in list(self._until.items()):
            for name in [n for n, until in typing.items() if until <= now]:
                del typing[name]
            if not typing:
                del self._until[room]


def typing_line(names: Sequence[str]) -> str:
    """`bob is typing…`, `bob and carol are typing…`, `bob, carol and 2 others are typing…`."""
    if not names:
        return ""
    if len(names) == 1:
        return f"{names[0]} is typing…"
    if len(names) == 2:
        return f"{names[0]} and {names[1]} are typing…"
    if len(names) == 3:
        return f"{names[0]}, {names[1]} and {names[2]} are typing…"
    return f"{names[0]}, {names[1]} and {len(names) - 2} others are typing…"


class TypingSender:
    """When this user's typing notices go out, from what is on their input line."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._room: str | None = None  # where "typing" was last said, until "stopped"
        self._said_at = 0.0

    def edited(self, room: str | None, text: str) -> list[tuple[str, bool]]:
        """The input line is now `text`, for `room`: the notices to send, as (room, active)."""
        notices: list[tuple[str, bool]] = []
        composing = room is not None and composes(text)
        if self._room is not None and (not composing or room != self._room):
            notices.append((self._room, False))
            self._room = None
        if composing and room is not None:
            now = self._clock()
            if self._room is None or now - self._said_at >= TYPING_REFRESH:
                notices.append((room, True))
                self._room, self._said_at = room, now
        return notices

    def sent(self) -> list[tuple[str, bool]]:
        """The line was entered: say "stopped" where "typing" was said."""
        return self.edited(None, "")


def composes(text: str) -> bool:
    """Whether an input line is a message being written (not blank, not a command)."""
    if not text.strip():
        return False
    stripped = text.lstrip()
    return not stripped.startswith("/") or stripped.startswith(_COMPOSING_COMMANDS)
