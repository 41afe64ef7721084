"""The server's log lines off a terminal: plain text for a pipe or a file, or one JSON object
per line for log shippers (a structlog `ProcessorFormatter`), both over the stdlib records the
server library writes (`logging.getLogger(...)` with `extra={"event": ..., field: ...}`).

A record that carries a `text` field (a chat message, a direct message) is private: its
rendered message never reaches a JSON line, and its `text` only with `--log-messages`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import structlog
from structlog.typing import EventDict, WrappedLogger

# The event of a record that names none (a library's own warning, say).
DEFAULT_EVENT = "log"
# What every LogRecord has: everything else on a record is a field its caller gave in `extra`.
_STANDARD_ATTRS = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


def record_fields(record: logging.LogRecord, message: str, *, log_messages: bool) -> dict[str, Any]:
    """`ts`, `level`, `logger`, `event`, the rendered `message` unless the record is private,
    then the fields of the event (`text` only with `log_messages`)."""
    fields: dict[str, Any] = {
        "ts": iso_utc(record.created, timespec="milliseconds"),
        "level": record.levelname.lower(),
        "logger": record.name,
        "event": getattr(record, "event", None) or DEFAULT_EVENT,
    }
    if not hasattr(record, "text"):
        fields["message"] = message
    for key, value in record.__dict__.items():
        if key in _STANDARD_ATTRS or key.startswith("_") or key in fields:
            continue
        if key == "text" and not log_messages:
            continue
        fields[key] = value
    return fields


def iso_utc(created: float, timespec: str = "seconds") -> str:
    """`2026-12-01T21:00:00Z`: a record's time, ISO-8601 in UTC."""
    stamp = datetime.fromtimestamp(created, UTC).isoformat(timespec=timespec)
    return stamp.removesuffix("+00:00") + "Z"


def json_formatter(*, log_messages: bool = False) -> logging.Formatter:
    """One JSON object per record, on one line."""
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[_fields(log_messages), structlog.processors.format_exc_info],
        processors=[structlog.processors.JSONRenderer(ensure_ascii=False)],
    )


def plain_formatter() -> logging.Formatter:
    """`2026-12-01T21:00:00Z INFO 🟢 [alice]: "hi"  #lobby`: one line per record (a traceback
    follows its line), no colour, no layout."""
    return _PlainFormatter()


# How a line of the log shows a control character (tab aside): a line break in user text must
# not start what looks like a log line of its own, and an escape sequence (in a URL path the web
# port logs, or anything else a client chose) must not drive the operator's terminal.
_ESCAPED = {code: f"\\x{code:02x}" for code in (*range(9), *range(10, 32), *range(0x7F, 0xA0))}
_ESCAPED |= {ord("\n"): "\\n", ord("\r"): "\\r"}
# Found first, in C: a line has none nearly always, and `translate` costs 3 µs a chat line
# (20 times the search), on the log thread, which shares the GIL with the event loop.
_NEEDS_ESCAPING = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f]")


def escaped(text: str) -> str:
    """`text` with its control characters written as escapes (`\\n`, `\\x1b`), on one line."""
    return text.translate(_ESCAPED) if _NEEDS_ESCAPING.search(text) else text


class _PlainFormatter(logging.Formatter):
    # A plain Formatter, not structlog's chain: a chat server writes one of these lines per
    # message, and the chain took twice the time for the same line.
    def __init__(self) -> None:
        super().__init__()
        # The stamp of the second the last line was in: a busy server writes thousands of
        # lines a second, and the stamp was two thirds of a line's formatting (1.3 of 1.9 µs).
        self._second = -1
        self._stamp = ""

    def format(self, record: logging.LogRecord) -> str:
        line = escaped(record.getMessage())
        room = getattr(record, "room", "")
        if getattr(record, "event", "") == "message" and room:
            line += f"  #{room}"
        if (second := int(record.created)) != self._second:
            self._second, self._stamp = second, iso_utc(second)
        line = f"{self._stamp} {record.levelname} {line}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def _fields(log_messages: bool) -> Callable[[WrappedLogger, str, EventDict], EventDict]:
    def processor(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
        # ProcessorFormatter rendered the record's message as the `event` of its dict.
        message = str(event_dict["event"])
        fields = record_fields(event_dict["_record"], message, log_messages=log_messages)
        if "exc_info" in event_dict:
            fields["exc_info"] = event_dict["exc_info"]
        return fields

    return processor
