"""The server's log output on stderr: Rich lines on a terminal (chat messages in their senders'
colours), plain lines in a pipe or a file, or JSON lines (`--log-format json`, see `logformat`).

Formatting and writing happen on a thread of their own, behind a bounded queue, so a log line
never blocks the event loop; when the queue is full (a terminal or a shipper slower than the
chat), chat-message lines are skipped and counted, and other lines only once RESERVE more
wait too (a stderr nobody reads). The thread wakes every LOG_TICK and writes everything queued
meanwhile, off a terminal in one write (see `_LogWriter`).
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from collections import deque
from typing import IO

from rich.console import Console, ConsoleRenderable
from rich.logging import RichHandler
from rich.text import Text

from grpcchat.cli.logformat import escaped
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
        return Text(escaped(message))


def _not_on_terminal(record: logging.LogRecord) -> bool:
    """The startup line on stdout already says where the server listens."""
    return getattr(record, "event", "") != "server_started"


# `--log-format`: Rich or plain lines (by whether stderr is a terminal), or JSON lines.
LOG_FORMATS = ("text", "json")
LOG_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
# Records waiting for the log thread.
QUEUE_SIZE = 10_000
# How often the log is written (everything queued since the last time), and how many lines one
# write holds at most.
LOG_TICK = 0.05
BATCH_LINES = 500
# Places beyond QUEUE_SIZE for lines other than chat messages (warnings, errors, the server's
# own), before they too are skipped and counted.
RESERVE = 1_000
# How long the process waits at exit for the log thread to write what is queued (a stderr
# nobody reads would hold it for ever).
STOP_WAIT = 2.0
# Chat-volume lines: skipped (and counted) rather than waited for when the queue is full.
CHAT_LOGGERS = frozenset({"grpcchat.messages", "grpcchat.direct", "grpcchat.relations"})


class _SkippingQueueHandler(logging.Handler):
    """Hands records to the log thread; skips chat-message lines when it is behind, and any
    line once it is far behind. Never waits: it runs on the event loop (and on the SQLite
    store's thread, which logs a failing file; `Handler.handle` holds the handler's lock).

    A deque, not a `queue.Queue`: the log thread takes records on its tick instead of waiting
    for them, so the Queue's locks and wake-ups were all cost (a chat line's CPU, everything
    from the call to the write, 9.6 -> 8.1 µs)."""

    def __init__(self, records: deque[logging.LogRecord], capacity: int = QUEUE_SIZE) -> None:
        super().__init__()
        self._records = records
        self._capacity = capacity
        self.skipped = 0  # chat-message lines
        self.skipped_other = 0

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.enqueue(record)
        except Exception:
            self.handleError(record)

    def enqueue(self, record: logging.LogRecord) -> None:
        if record.name in CHAT_LOGGERS:
            if len(self._records) < self._capacity:
                self._records.append(record)
            else:
                self.skipped += 1
            return
        # Other lines have RESERVE more places: a slow log still gets every one of them. Past
        # that, stderr is stalled (a shipper that holds it open and reads nothing), and
        # waiting for room froze the server, its drain and a second Ctrl-C with it.
        if len(self._records) >= self._capacity + RESERVE:
            self.skipped_other += 1
            return
        if self.skipped or self.skipped_other:
            self._records.append(self._skipped_note())
        self._records.append(record)

    def _skipped_note(self) -> logging.LogRecord:
        if self.skipped_other and not self.skipped:
            message = "%d lines were not logged: the log could not keep up"
            args: tuple[int, ...] = (self.skipped_other,)
        elif self.skipped_other:
            message = (
                "%d message lines and %d other lines were not logged: the log could not keep up"
            )
            args = (self.skipped, self.skipped_other)
        else:
            message = "%d message lines were not logged: the log could not keep up"
            args = (self.skipped,)
        note = logging.LogRecord("grpcchat.server", logging.WARNING, "", 0, message, args, None)
        note.event = "log_lines_skipped"
        note.skipped = self.skipped
        note.skipped_other = self.skipped_other
        self.skipped = self.skipped_other = 0
        return note


class _LogWriter:
    """The thread that formats and writes the queued records: every LOG_TICK, all of them.

    Not a `QueueListener`, which waits on the queue and so is woken by every record: on a busy
    server that was a thread switch, and a turn of the GIL away from the event loop, per chat
    line (the default server ran 15% slower with its log on than with `--quiet`)."""

    def __init__(self, records: deque[logging.LogRecord], handler: logging.Handler) -> None:
        self._records = records
        self._handler = handler
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="grpcchat-log", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Write what is queued and end the thread, waiting at most `timeout` seconds for
        it (a daemon: one stuck writing to a stalled stderr does not hold the process)."""
        if self._thread.is_alive():
            self._stopping.set()
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stopping.wait(LOG_TICK):
            self._write_queued()
        self._write_queued()

    def _write_queued(self) -> None:
        handled = 0
        while self._records:  # this thread alone takes from the left
            record = self._records.popleft()
            if record.levelno >= self._handler.level:
                self._handler.handle(record)
                handled += 1
                if handled % BATCH_LINES == 0:
                    self._write_batch()
        self._write_batch()

    def _write_batch(self) -> None:
        """Write what the handler holds: outside `handle`'s lock (see _BatchingStreamHandler)."""
        if isinstance(self._handler, _BatchingStreamHandler):
            self._handler.write_batch()
        else:
            self._handler.flush()


class _BatchingStreamHandler(logging.StreamHandler[IO[str]]):
    """A stream handler whose lines wait in memory until `write_batch`, which the log thread
    alone calls (see `_LogWriter`).

    With a stderr nobody reads, that write never returns, so it shares no lock with the rest of
    the process: it goes to a descriptor of its own (not through `sys.stderr`, whose buffer's
    lock Python takes at exit), never under the handler's lock (which `logging.shutdown` takes
    at exit), and `flush`, which `logging.shutdown` calls, writes nothing (the log thread has
    written, or cannot). The process then exits, as `_LogWriter.stop` lets it."""

    def __init__(self, stream: IO[str]) -> None:
        super().__init__(stream)
        self._lines: list[str] = []
        self._fd = _own_descriptor(stream)
        self._errors = getattr(stream, "errors", None) or "backslashreplace"

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._lines.append(self.format(record) + self.terminator)
        except Exception:
            self.handleError(record)

    def flush(self) -> None:
        """Nothing: only the log thread writes (`write_batch`)."""

    def write_batch(self) -> None:
        if not self._lines:
            return
        lines, self._lines = "".join(self._lines), []
        try:
            if self._fd is None:
                self.stream.write(lines)
                self.stream.flush()
                return
            encoding = getattr(self.stream, "encoding", None) or "utf-8"
            data = lines.encode(encoding, self._errors)
            while data:
                data = data[os.write(self._fd, data) :]
        except Exception:
            # As StreamHandler: a log that cannot be written is reported, never raised.
            self.handleError(logging.makeLogRecord({"msg": lines}))


def _own_descriptor(stream: IO[str]) -> int | None:
    """A descriptor of `stream`'s file for the log thread alone (None: a stream in memory)."""
    try:
        stream.flush()  # what was printed before comes first
        return os.dup(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return None


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
    # What no format shows, and every line would look up on the event loop: the logging
    # HOWTO's "Optimization" switches (the caller's file and line, thread, process).
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    records: deque[logging.LogRecord] = deque()
    writer = _LogWriter(records, handler)
    writer.start()
    atexit.register(writer.stop, STOP_WAIT)  # writes what is queued before the process exits
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

    stream = _BatchingStreamHandler(console.file)
    stream.setFormatter(
        json_formatter(log_messages=log_messages) if log_format == "json" else plain_formatter()
    )
    return stream
