"""The server's log output: Rich lines on stderr, chat messages in their senders' colours."""

from __future__ import annotations

import logging

from rich.console import Console, ConsoleRenderable
from rich.logging import RichHandler
from rich.text import Text

from grpcchat.cli.render import sender_style


class ChatLogHandler(RichHandler):
    """Server logs; chat messages are rendered like the article's `🟢 [alice]: "hi"` line,
    with the sender in its stable colour."""

    def render_message(self, record: logging.LogRecord, message: str) -> ConsoleRenderable:
        if record.name == "grpcchat.messages" and isinstance(record.args, tuple):
            sender, text = (str(arg) for arg in record.args)
            line = Text("🟢 [")
            line.append(sender, style=sender_style(sender))
            line.append(f']: "{text}"')
            where = getattr(record, "where", "")
            if where:
                line.append(f"  {where}", style="dim")
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
