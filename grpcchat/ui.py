"""Rich rendering: pure functions that turn domain objects into `rich.text.Text`, plus the
server's log handler. User-supplied text is always wrapped in `Text(...)`, never parsed as markup,
so a message containing "[bold]" prints literally."""

from __future__ import annotations

import logging
import zlib
from datetime import datetime
from typing import TYPE_CHECKING

from rich.console import Console, ConsoleRenderable
from rich.logging import RichHandler
from rich.text import Text

if TYPE_CHECKING:
    from grpcchat.models import Message

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


def local_time(moment: datetime) -> str:
    return moment.astimezone().strftime("%H:%M:%S")


def render_message(message: Message, *, show_room: bool = False) -> Text:
    """`14:40:12 grace: Hello World?` with the time dimmed and the sender in its colour."""
    line = Text()
    line.append(local_time(message.sent_at), style="dim")
    line.append(" ")
    if show_room:
        line.append(f"#{message.room} ", style="dim cyan")
    line.append(message.sender, style=sender_style(message.sender))
    line.append(": ")
    line.append(message.text)
    return line


def render_notice(text: str, style: str = "dim") -> Text:
    return Text(text, style=style)


def render_error(text: str) -> Text:
    return Text(f"error: {text}", style="bold red")


def render_sent(message: Message) -> Text:
    """What `grpcchat send` prints for an accepted message."""
    line = Text("✓ ", style="green")
    line.append(f"#{message.room}", style="cyan")
    if message.seq:
        line.append(f" seq {message.seq}", style="dim")
    line.append(f" {local_time(message.sent_at)}", style="dim")
    if message.id:
        line.append(f" id {message.id}", style="dim")
    return line


class ChatLogHandler(RichHandler):
    """Server logs; chat messages are rendered like the article's `🟢 [alice]: "hi"` line,
    with the sender in its stable colour."""

    def render_message(self, record: logging.LogRecord, message: str) -> ConsoleRenderable:
        if record.name == "grpcchat.messages" and isinstance(record.args, tuple):
            sender, text = (str(arg) for arg in record.args)
            line = Text("🟢 [")
            line.append(sender, style=sender_style(sender))
            line.append(f']: "{text}"')
            room = getattr(record, "room", "")
            if room:
                line.append(f"  #{room}", style="dim")
            return line
        return Text(message)


def configure_logging(level: int, console: Console | None = None) -> None:
    handler = ChatLogHandler(
        console=console or Console(stderr=True),
        show_path=False,
        markup=False,
        rich_tracebacks=False,
        log_time_format="[%X]",
    )
    logging.basicConfig(level=level, handlers=[handler], format="%(message)s", force=True)
