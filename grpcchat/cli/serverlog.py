"""The server's log output on stderr: Rich lines on a terminal (chat messages in their senders'
colours), plain lines in a pipe or a file, or JSON lines (`--log-format json`, see `logformat`).

Formatting and writing happen on a listener thread, behind a bounded queue, so a log line never
blocks the event loop; when the queue is full (a terminal or a shipper slower than the chat),
chat-message lines are skipped and counted, never anything else.
"""

from __future__ import annotations

import atexit
import logging
import queue
from logging.handlers import QueueHandler, QueueListener

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
            room = getattr(record, "room", "")
            if room:
                line.append(f"  #{room}", style="dim")
            return line
        return Text(message)


def _not_on_terminal(record: logging.LogRecord) -> bool:
    """The startup line on stdout already says where the server listens."""
    return getattr(record, "event", "") != "server_started"


# `--log-format`: Rich or plain lines (by whether stderr is a terminal), or JSON lines.
LOG_FORMATS = ("text", "json")
# Records waiting for the listener thread.
QUEUE_SIZE = 10_000
# Chat-volume lines: skipped (and counted) rather than waited for when the queue is full.
CHAT_LOGGERS = frozenset({"grpcchat.messages", "grpcchat.direct", "grpcchat.relations"})


class _SkippingQueueHandler(QueueHandler):
    """Hands records to the listener; skips chat-message lines when it is behind."""

    def __init__(self, records: queue.Queue[logging.LogRecord]) -> None:
        super().__init__(records)
        self._records = records
        self.skipped = 0

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        # The Rich handler renders message records from their args: keep the record as it is.
        return record

    def enqueue(self, record: logging.LogRecord) -> None:
        if record.name in CHAT_LOGGERS:
            try:
                self._records.put_nowait(record)
            except queue.Full:
                self.skipped += 1
            return
        if self.skipped:
            note = logging.LogRecord(
                "grpcchat.server",
                logging.WARNING,
                "",
                0,
                "%d message lines were not logged: the log could not keep up",
                (self.skipped,),
                None,
            )
            note.event = "log_lines_skipped"
            note.skipped = self.skipped
            self.skipped = 0
            self._records.put(note)
        # Warnings and errors always get through (waiting, in the rare case the queue is full).
        self._records.put(record)


def configure_logging(
    level: int,
    console: Console | None = None,
    *,
    log_format: str = "text",
    log_messages: bool = False,
) -> None:
    """Log at `level` to `console`'s file (stderr): `text` is Rich on a terminal and plain lines
    elsewhere, `json` one object per line; message text reaches JSON only with `log_messages`."""
    console = console or Console(stderr=True)
    handler = _handler(console, log_format, log_messages)
    records: queue.Queue[logging.LogRecord] = queue.Queue(QUEUE_SIZE)
    listener = QueueListener(records, handler, respect_handler_level=True)
    listener.start()
    atexit.register(listener.stop)  # flushes what is queued before the process exits
    logging.basicConfig(
        level=level, handlers=[_SkippingQueueHandler(records)], format="%(message)s", force=True
    )


def _handler(console: Console, log_format: str, log_messages: bool) -> logging.Handler:
    if log_format == "text" and console.is_terminal:
        rich = ChatLogHandler(
            console=console,
            show_path=False,
            markup=False,
            rich_tracebacks=False,
            log_time_format="[%X]",
        )
        rich.addFilter(_not_on_terminal)
        return rich
    # structlog is imported only by the servers that write plain or JSON lines.
    from grpcchat.cli.logformat import json_formatter, plain_formatter

    stream = logging.StreamHandler(console.file)
    stream.setFormatter(
        json_formatter(log_messages=log_messages) if log_format == "json" else plain_formatter()
    )
    return stream
