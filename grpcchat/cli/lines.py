"""The lines a one-shot command prints, as text with styles but without Rich: `render` turns
them into `rich.text.Text` for a terminal, `output` prints them plain anywhere else. So a
script's `grpcchat send` never imports Rich, and both print the same characters."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from grpcchat.core.models import Message

# A message older than this shows its date too.
DATED_AFTER = timedelta(hours=20)


class StyledLine(NamedTuple):
    """`style` for the whole line, and its pieces, each `(text, style)` ("": the line's)."""

    style: str
    pieces: tuple[tuple[str, str], ...]

    @property
    def text(self) -> str:
        return "".join(text for text, _ in self.pieces)


# What another user, or a server that is not grpcchat, could use to drive the terminal: the C0
# controls but newline and tab, DEL, and the C1 controls (Rich's `Text` strips only five of
# them). Each is shown as one visible character, so styles' offsets still hold: C0 as its
# control picture (ESC as ␛), DEL as ␡, C1 as �. A grpcchat server refuses them all in text.
_VISIBLE = (
    {code: 0x2400 + code for code in range(32) if code not in (9, 10)}
    | {0x7F: 0x2421}
    | dict.fromkeys(range(0x80, 0xA0), 0xFFFD)
)

# What `grpcchat send` says it did to a message: "(edited 3f0c...)".
_CHANGES = {"edit": "edited", "delete": "deleted", "react": "reacted", "unreact": "took back"}


# What is shown within one line (a name, a room, an emoji) shows a newline and a tab too: a
# name that broke the line could pass for a line of its own (`→ bob joined #lobby`).
_VISIBLE_INLINE = _VISIBLE | {9: 0x2409, 10: 0x240A}


def visible(text: str) -> str:
    """`text` with every character that could drive the terminal shown instead."""
    return text.translate(_VISIBLE)


def visible_inline(text: str) -> str:
    """`visible`, for what is shown within one line: its line breaks and tabs shown too."""
    return text.translate(_VISIBLE_INLINE)


def local_time(moment: datetime, now: datetime | None = None) -> str:
    """The time of day in the local zone, with the date for a moment more than DATED_AFTER
    before `now` (two days' messages must not look alike; a time of day later than now's
    is yesterday's); in UTC for a moment the local zone cannot hold (the calendar's first or
    last day: a time the article's server relayed as a client wrote it)."""
    try:
        local = moment.astimezone()
    except OverflowError:
        local = moment
    if (now or datetime.now(UTC)) - moment > DATED_AFTER:
        return f"{local.date().isoformat()} {local:%H:%M:%S}"  # (%Y is not zero-padded)
    return f"{local:%H:%M:%S}"


def error_line(text: str) -> StyledLine:
    return StyledLine("bold red", ((f"error: {text}", ""),))


def sent_line(message: Message, duplicate: bool = False) -> StyledLine:
    """What `grpcchat send` prints for an accepted message."""
    pieces = [
        ("✓ ", ""),
        (f"@{message.recipient}" if message.recipient else f"#{message.room}", "cyan"),
    ]
    if message.seq:
        pieces.append((f" seq {message.seq}", "dim"))
    pieces.append((f" {local_time(message.sent_at)}", "dim"))
    if message.id:
        pieces.append((f" id {message.id}", "dim"))
    if message.relation is not None:
        what = _CHANGES[message.relation.kind.value]
        emoji = f" {message.relation.emoji}" if message.relation.emoji else ""
        pieces.append((f" ({what}{emoji} {message.relation.target})", ""))
    elif message.reply_to:
        pieces.append((f" (reply to {message.reply_to})", ""))
    if duplicate:
        gone = ", and deleted since" if message.deleted else ""
        pieces.append((f" (already sent: not posted again{gone})", "yellow"))
    return StyledLine("green", tuple(pieces))
