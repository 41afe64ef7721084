"""Rich rendering: pure functions that turn domain objects into `rich.text.Text`. User-supplied
text is always wrapped in `Text(...)`, never parsed as markup, so a message containing "[bold]"
prints literally. (The server's log handler is in `serverlog`.)"""

from __future__ import annotations

import zlib
from typing import TYPE_CHECKING

from rich import box
from rich.table import Table
from rich.text import Text

from grpcchat.cli.lines import StyledLine, error_line, local_time, sent_line

if TYPE_CHECKING:
    from grpcchat.core.models import HistoryGap, Message, PresenceChange, RoomInfo, RoomJoined

# Readable on dark and light terminals; a sender keeps its colour across runs and machines.
_SENDER_COLOURS = (
    "cyan",
    "green",
    "magenta",
    "yellow",
    "blue",
    "bright_cyan",
    "bright_green",
    "bright_magenta",
    "dark_orange",
    "orchid",
    "spring_green3",
    "deep_sky_blue1",
)


def sender_style(name: str) -> str:
    return "bold " + _SENDER_COLOURS[zlib.crc32(name.encode()) % len(_SENDER_COLOURS)]


def render_message(message: Message, *, show_room: bool = False, replayed: bool = False) -> Text:
    """`14:40:12 grace: Hello World?` with the time dimmed and the sender in its colour;
    `* grace waves` for an action, `[grace → bob]` for a direct message. Replayed history is
    dimmed as a whole."""
    line = Text()
    line.append(local_time(message.sent_at), style="dim")
    line.append(" ")
    if message.recipient:
        line.append("[", style="magenta")
        line.append(message.sender, style=sender_style(message.sender))
        line.append(" → ", style="magenta")
        line.append(message.recipient, style=sender_style(message.recipient))
        line.append("] ", style="magenta")
    elif show_room:
        line.append(f"#{message.room} ", style="dim cyan")
    if message.action:
        line.append("* ", style="italic")
        line.append(message.sender, style=sender_style(message.sender))
        line.append(" ")
        line.append(message.text, style="italic")
    else:
        if not message.recipient:
            line.append(message.sender, style=sender_style(message.sender))
            line.append(": ")
        line.append(message.text)
    if replayed:
        line.stylize("dim")
    return line


def render_presence(change: PresenceChange, *, show_room: bool = True) -> Text:
    """`→ alice joined #lobby`, dimmed: never mistaken for a message from a user."""
    arrow, verb = ("→", "joined") if change.joined else ("←", "left")
    line = Text(f"{local_time(change.at)} {arrow} ", style="dim")
    line.append(change.name, style="dim " + sender_style(change.name))
    line.append(f" {verb}" + (f" #{change.room}" if show_room else ""), style="dim")
    return line


def render_joined(joined: RoomJoined) -> Text:
    line = Text(f"── #{joined.room}: ", style="dim")
    line.append(", ".join(joined.members) or "nobody else here", style="dim")
    line.append(" ──", style="dim")
    return line


def render_gap(gap: HistoryGap) -> Text:
    detail = f"messages {gap.first_seq}-{gap.last_seq}: " if gap.first_seq else ""
    return Text(
        f"some history of #{gap.room} is no longer available ({detail}{gap.reason})",
        style="yellow",
    )


def render_rooms(rooms: list[RoomInfo]) -> Table:
    table = Table(box=box.SIMPLE_HEAD)
    table.add_column("room", style="cyan")
    table.add_column("members", justify="right")
    table.add_column("messages", justify="right", style="dim")
    for room in rooms:
        table.add_row(Text(f"#{room.name}"), str(room.members), str(room.messages))
    return table


def render_members(room: str, members: list[str]) -> Text:
    line = Text(f"#{room}: ", style="cyan")
    for i, name in enumerate(members):
        if i:
            line.append(", ")
        line.append(name, style=sender_style(name))
    if not members:
        line.append("nobody", style="dim")
    return line


def render_notice(text: str, style: str = "dim") -> Text:
    return Text(text, style=style)


def render_started(address: str, extras: list[str]) -> Text:
    """`🚀 grpcchat listening on 127.0.0.1:4000 (history ...; Ctrl-C to stop)`."""
    line = Text("🚀 grpcchat listening on ")
    line.append(address, style="bold")
    line.append(f" ({'; '.join([', '.join(extras), 'Ctrl-C to stop'])})", style="dim")
    return line


def render_error(text: str) -> Text:
    return styled(error_line(text))


def render_sent(message: Message, duplicate: bool = False) -> Text:
    """What `grpcchat send` prints for an accepted message."""
    return styled(sent_line(message, duplicate))


def styled(line: StyledLine) -> Text:
    return Text.assemble(*line.pieces, style=line.style)
