"""The server's log output: Rich lines on stderr, chat messages in their senders' colours.

Formatting and writing happen on a listener thread, behind a bounded queue, so a log line never
blocks the event loop; when the queue is full (a terminal slower than the chat), chat-message
lines are skipped and counted, never anything else.
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
            where = getattr(record, "where", "")
            if where:
                line.append(f"  {where}", style="dim")
            return line
        return Text(message)


# Records waiting for the listener thread.
QUEUE_SIZE = 10_000


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
        if record.name == "grpcchat.messages":
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
            self.skipped = 0
            self._records.put(note)
        # Warnings and errors always get through (waiting, in the rare case the queue is full).
        self._records.put(record)


def configure_logging(level: int, console: Console | None = None) -> None:
    handler = ChatLogHandler(
        console=console or Console(stderr=True),
        show_path=False,
        markup=False,
        rich_tracebacks=False,
        log_time_format="[%X]",
    )
    records: queue.Queue[logging.LogRecord] = queue.Queue(QUEUE_SIZE)
    listener = QueueListener(records, handler, respect_handler_level=True)
    listener.start()
    atexit.register(listener.stop)  # flushes what is queued before the process exits
    logging.basicConfig(
        level=level, handlers=[_SkippingQueueHandler(records)], format="%(message)s", force=True
    )
