"""stdin's lines as they come, for `grpcchat send`: a program that keeps running and writes a
line now and then (`tail -f app.log | grpcchat send`) has each line sent when it is written,
not when the program ends.

A thread reads (stdin may be a pipe, a file or a terminal, and only a thread reads all three
without blocking the event loop); at most READ_AHEAD lines wait for the sender, so a fast
producer is held back instead of filling memory. Bytes that are not UTF-8 are kept as lone
surrogates, which the message check refuses with a clear message.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import threading
from collections.abc import AsyncIterator

from grpcchat.cli.exits import fail
from grpcchat.core.errors import ConfigError

READ_AHEAD = 1024
# A line this long without its line break yet is handed over as it is (the message check
# refuses it as too long), and the rest of it dropped, rather than held while it grows.
MAX_LINE_BYTES = 64 * 1024


def read_lines() -> list[str]:
    """Every non-blank line of stdin, once it has ended (for what takes exactly one line); exit
    1 saying why if stdin cannot be read."""
    try:
        _hint()
        with os.fdopen(_fd(), "rb", closefd=False) as raw_lines:
            return [line for raw in raw_lines if (line := _decoded(raw)).strip()]
    except ConfigError as error:
        fail(str(error))
    except OSError as error:
        fail(str(_unreadable(error)))


async def lines_as_they_come() -> AsyncIterator[str]:
    """Each non-blank line of stdin, without its line break, as soon as it is read, until stdin
    ends. A failure to read stdin is raised here (a ConfigError), after the lines read before
    it."""
    loop = asyncio.get_running_loop()
    fd = _fd()
    lines: asyncio.Queue[str | BaseException | None] = asyncio.Queue()
    room = threading.Semaphore(READ_AHEAD)

    def hand_over(item: str | BaseException | None) -> None:
        # The loop is closed once the command has ended (a refusal stops reading): then
        # nobody wants the line.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(lines.put_nowait, item)

    def take(raw: bytes) -> None:
        if (line := _decoded(raw)).strip():
            room.acquire()
            hand_over(line)

    def read() -> None:
        # From the file descriptor, not sys.stdin: a daemon thread blocked inside the buffered
        # reader holds its lock, and Python aborts at exit when it finds that lock taken.
        pending = b""
        overlong = False  # the rest of a line already handed over as too long: dropped
        try:
            while chunk := os.read(fd, 65536):
                *complete, pending = (pending + chunk).split(b"\n")
                for raw in complete:
                    if not overlong:
                        take(raw)
                    overlong = False
                if len(pending) > MAX_LINE_BYTES:
                    if not overlong:
                        take(pending)  # the message check refuses it as too long
                    pending, overlong = b"", True
        except OSError as error:  # handed to the reader, which raises it
            hand_over(_unreadable(error))
            return
        except Exception as error:
            hand_over(error)
            return
        if pending and not overlong:
            take(pending)
        hand_over(None)

    _hint()
    # A daemon: a command that stops early must not wait for a line that may never come.
    threading.Thread(target=read, name="grpcchat-stdin", daemon=True).start()
    while (item := await lines.get()) is not None:
        if isinstance(item, BaseException):
            raise item
        room.release()
        yield item


def _fd() -> int:
    """stdin's file descriptor, or a ConfigError if there is none (started with it closed)."""
    try:
        if sys.stdin is None:
            raise ValueError
        return sys.stdin.fileno()
    except (ValueError, OSError):
        raise ConfigError("cannot read stdin: it is closed") from None


def _unreadable(error: OSError) -> ConfigError:
    return ConfigError(f"cannot read stdin: {error.strerror or error}")


def _decoded(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape").rstrip("\r\n")


def _hint() -> None:
    if sys.stdin is not None and sys.stdin.isatty():
        from grpcchat.cli.consoles import err_console

        err_console.print("[dim]reading messages from stdin, one per line; Ctrl-D ends[/]")
