"""Rich rendering: pure functions that turn domain objects into `rich.text.Text`. User-supplied
text is always wrapped in `Text(...)`, never parsed as markup, so a message containing "[bold]"
prints literally, and passes `lines.visible`, so no character in it can drive the terminal
(a server that is not grpcchat relays whatever its clients send). (The server's log handler is
in `serverlog`.)"""

from __future__ import annotations

import zlib
from typing import TYPE_CHECKING

from rich import box
from rich.console import RenderableType
from rich.table import Table
from rich.text import Text

from grpcchat.cli.lines import (
    StyledLine,
    error_line,
    local_time,
    sent_line,
    visible,
    visible_inline,
)
from grpcchat.core.history import MAX_UNREAD

if TYPE_CHECKING:
    from grpcchat.core.models import HistoryGap, Message, PresenceChange, RoomInfo, RoomJoined

# Width of a message's handle (its seq, right-aligned) at the start of a line in `join`.
HANDLE_WIDTH = 4
# Characters of a quoted message shown above a reply.
QUOTE_LENGTH = 60
DELETED = "message deleted"
UNREAD_DIVIDER = "── unread ──"

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


def render_message(
    message: Message, *, show_room: bool = False, replayed: bool = False, handle: bool = False
) -> Text:
    """`14:40:12 grace: Hello World?` with the time dimmed and the sender in its colour;
    `* grace waves` for an action, `[grace → bob]` for a direct message. Replayed history is
    dimmed as a whole. In its current state: `(edited)` after edited text, and a deleted
    message dimmed as `grace: message deleted`.

    With `handle`, the line starts with the message's seq, dimmed (`  12 14:40:12 grace: ...`):
    what a person types to edit, delete, react or reply to it."""
    line = Text()
    if handle:
        line.append(f"{message.seq:>{HANDLE_WIDTH}} " if message.seq else " " * (HANDLE_WIDTH + 1))
        line.stylize("dim")
    line.append(local_time(message.sent_at), style="dim")
    line.append(" ")
    if message.recipient:
        line.append("[", style="magenta")
        _append_name(line, message.sender)
        line.append(" → ", style="magenta")
        _append_name(line, message.recipient)
        line.append("] ", style="magenta")
    elif show_room:
        line.append(f"#{visible_inline(message.room)} ", style="dim cyan")
    if message.deleted:
        _append_name(line, message.sender)
        line.append(": ")
        line.append(DELETED, style="italic")
        line.stylize("dim")
        return line
    if message.action:
        line.append("* ", style="italic")
        _append_name(line, message.sender)
        line.append(" ")
        _append_text(line, message.text, handle, style="italic")
    else:
        if not message.recipient:
            _append_name(line, message.sender)
            line.append(": ")
        _append_text(line, message.text, handle)
    if message.edited_at is not None:
        line.append(" (edited)", style="dim")
    if replayed:
        line.stylize("dim")
    return line


def render_post(
    message: Message,
    *,
    quoted: Message | None = None,
    show_room: bool = False,
    replayed: bool = False,
    handle: bool = False,
) -> Text:
    """A message as a person reads it: a one-line quote of what it replies to (`quoted`, the
    message named by its `reply_to`, None if not at hand), the message line, and its reactions
    on a line of their own."""
    lines = []
    if message.reply_to:
        lines.append(render_quote(quoted, handle=handle))
    lines.append(render_message(message, show_room=show_room, replayed=replayed, handle=handle))
    if message.reactions:
        lines.append(render_reactions(message, handle=handle))
    post = Text("\n").join(lines)
    if replayed:
        post.stylize("dim")
    return post


def render_quote(quoted: Message | None, *, handle: bool = False) -> Text:
    """`  ┌ alice: the text it answers, up to 60 characters…`, dimmed."""
    line = Text(_indent(handle) + "┌ ", style="dim")
    if quoted is None:
        line.append("a message not shown here", style="italic")
        return line
    if quoted.seq and handle:
        line.append(f"{quoted.seq} ")
    _append_name(line, quoted.sender, dim=True)
    line.append(": ")
    if quoted.deleted:
        line.append(DELETED, style="italic")
    else:
        text = " ".join(quoted.text.split())
        line.append(visible(text if len(text) <= QUOTE_LENGTH else text[: QUOTE_LENGTH - 1] + "…"))
    return line


def render_reactions(message: Message, *, handle: bool = False, changed: bool = False) -> Text:
    """`  ↳ 👍 alice, bob · 🎉 carol`: the message's reactions, compact. `changed`: a line of
    its own telling the reactions changed, naming the message (`  ↳ 12 👍 alice`)."""
    line = Text(_indent(handle) + "↳ ", style="dim")
    if changed and message.seq:
        line.append(f"{message.seq} ", style="dim")
    for i, reaction in enumerate(message.reactions):
        if i:
            line.append(" · ", style="dim")
        line.append(f"{visible_inline(reaction.emoji)} ")
        line.append(visible_inline(", ".join(reaction.names)), style="dim")
    if not message.reactions:
        line.append("no reactions", style="dim italic")
    return line


def render_unseen_change(entry: Message) -> Text:
    """An edit, delete or reaction of a message not shown here (too old, or never seen)."""
    relation = entry.relation
    assert relation is not None
    line = Text(f"{local_time(entry.sent_at)} ", style="dim")
    _append_name(line, entry.sender, dim=True)
    match relation.kind.value:
        case "edit":
            line.append(" edited an earlier message: ", style="dim")
            _append_text(line, entry.text, handle=False)
        case "delete":
            line.append(" deleted an earlier message", style="dim")
        case "react":
            line.append(
                f" reacted {visible_inline(relation.emoji)} to an earlier message", style="dim"
            )
        case _:
            emoji = visible_inline(relation.emoji)
            line.append(f" took back {emoji} from an earlier message", style="dim")
    return line


def render_unread() -> Text:
    """The divider between what was read and what was not."""
    return Text(UNREAD_DIVIDER, style="bold yellow")


def _append_name(line: Text, name: str, *, dim: bool = False) -> None:
    """A user's name in its colour (dimmed in a quote or a notice), shown, never obeyed."""
    line.append(visible_inline(name), style=("dim " if dim else "") + sender_style(name))


def _append_text(line: Text, text: str, handle: bool, style: str = "") -> None:
    """A message's text; each of its lines after the first starts with a dimmed `┆` under the
    time, so no line of a message can pass for a line of another kind (`→ bob joined`)."""
    first, *more = visible(text).split("\n")
    line.append(first, style=style)
    for text_line in more:
        line.append("\n" + _indent(handle) + "┆ ", style="dim")
        line.append(text_line, style=style)


def _indent(handle: bool) -> str:
    """Quote and reaction lines start under the time (with handles: under the handle)."""
    return " " * (HANDLE_WIDTH - 2) if handle else "  "


def render_presence(change: PresenceChange, *, show_room: bool = True) -> Text:
    """`→ alice joined #lobby`, dimmed: never mistaken for a message from a user."""
    arrow, verb = ("→", "joined") if change.joined else ("←", "left")
    line = Text(f"{local_time(change.at)} {arrow} ", style="dim")
    _append_name(line, change.name, dim=True)
    line.append(f" {verb}" + (f" #{visible_inline(change.room)}" if show_room else ""), style="dim")
    return line


def render_joined(joined: RoomJoined) -> Text:
    line = Text(f"── #{visible_inline(joined.room)}: ", style="dim")
    line.append(visible_inline(", ".join(joined.members)) or "nobody else here", style="dim")
    line.append(" ──", style="dim")
    return line


def render_gap(gap: HistoryGap) -> Text:
    detail = f"messages {gap.first_seq}-{gap.last_seq}: " if gap.first_seq else ""
    return Text(
        visible(f"some history of #{gap.room} is no longer available ({detail}{gap.reason})"),
        style="yellow",
    )


def render_rooms(rooms: list[RoomInfo], *, unread: bool = False) -> Table:
    """The rooms, with the caller's unread counts when `unread` (the server knew the caller)."""
    table = Table(box=box.SIMPLE_HEAD)
    table.add_column("room", style="cyan")
    table.add_column("members", justify="right")
    table.add_column("messages", justify="right", style="dim")
    if unread:
        table.add_column("unread", justify="right", style="bold")
    for room in rooms:
        cells: list[RenderableType] = [
            Text(f"#{visible_inline(room.name)}"),
            str(room.members),
            str(room.messages),
        ]
        if unread:
            cells.append(_unread(room.unread))
        table.add_row(*cells)
    return table


def _unread(count: int) -> str:
    """Blank for none; the server counts up to MAX_UNREAD, so that many reads as "1000+"."""
    return "" if not count else f"{count}+" if count >= MAX_UNREAD else str(count)


def render_members(room: str, members: list[str]) -> Text:
    line = Text(f"#{visible_inline(room)}: ", style="cyan")
    for i, name in enumerate(members):
        if i:
            line.append(", ")
        _append_name(line, name)
    if not members:
        line.append("nobody", style="dim")
    return line


def render_notice(text: str, style: str = "dim") -> Text:
    return Text(visible(text), style=style)


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
    return Text.assemble(*((visible(text), style) for text, style in line.pieces), style=line.style)
