"""A program in a pseudo-terminal, rendered by pyte: tests assert on what a person would see.

The pseudo-terminal gives the raw byte stream; prompt_toolkit redraws its input line with cursor
moves and erases, so the bytes alone cannot say what is on screen. pyte interprets them into a
grid of cells (text, colour, bold) and answers the terminal's cursor-position queries like a
real one.

The program is started by `subprocess`, not by forking this process the way pexpect.spawn does:
a forked copy of a test process with gRPC loaded runs Python (and so, now and then, gRPC's
poller) before it execs, and about one start in 360 died with "epoll_wait error: Bad file
descriptor" before `join` ever ran. subprocess execs straight from C; a two-line launcher then
makes the terminal its controlling terminal, as a login would, so Ctrl-C and resizes behave.
"""

from __future__ import annotations

import errno
import fcntl
import io
import os
import select
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Callable, Sequence

import pyte
from rich.console import Console
from rich.text import Text

ROWS = 24
COLUMNS = 120

# Runs in the child, after subprocess has made it a session leader with the terminal on 0-2.
_ADOPT_TERMINAL = (
    "import fcntl, os, sys, termios; fcntl.ioctl(0, termios.TIOCSCTTY, 0); "
    "os.execvp(sys.argv[1], sys.argv[1:])"
)


class _AnsweringScreen(pyte.Screen):
    """A screen that writes its replies (cursor position reports) back to the program."""

    def __init__(self, columns: int, lines: int) -> None:
        super().__init__(columns, lines)
        self.reply: Callable[[str], object] | None = None

    def write_process_input(self, data: str) -> None:
        if self.reply is not None:
            self.reply(data)


class Terminal:
    """`argv` running in a ROWS x COLUMNS pseudo-terminal, its output rendered on `screen`."""

    def __init__(
        self, argv: Sequence[str], env: dict[str, str], rows: int = ROWS, columns: int = COLUMNS
    ) -> None:
        self.screen = _AnsweringScreen(columns, rows)
        self._stream = pyte.ByteStream(self.screen)
        self._master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
        try:
            self.child = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _ADOPT_TERMINAL, *argv],
                stdin=slave,
                stdout=slave,
                stderr=slave,
                env=env,
                start_new_session=True,
            )
        finally:
            # Only the child may hold the terminal's end, or reading ours never sees it exit.
            os.close(slave)
        self.screen.reply = self.type
        self.raw = b""
        self.exited = False

    # -- reading ---------------------------------------------------------------------------

    def _pump(self, timeout: float) -> None:
        """Feed whatever the program writes within `timeout` seconds (returns on first data)."""
        if self.exited:
            return
        readable, _, _ = select.select([self._master], [], [], timeout)
        if not readable:
            return
        try:
            data = os.read(self._master, 65536)
        except OSError as error:
            if error.errno != errno.EIO:  # EIO: the program and its terminal are gone
                raise
            data = b""
        if not data:
            self.exited = True
            return
        self.raw += data
        self._stream.feed(data)

    def wait_for(self, condition: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
        """Read output until `condition()` holds; fail with the screen after `timeout`."""
        deadline = time.monotonic() + timeout
        while not condition():
            remaining = deadline - time.monotonic()
            if remaining <= 0 or (self.exited and not condition()):
                raise AssertionError(f"timed out waiting for {what}; screen:\n{self.dump()}")
            self._pump(min(remaining, 0.5))

    def wait_for_text(self, text: str, timeout: float = 5.0) -> None:
        self.wait_for(lambda: text in self.text(), repr(text), timeout)

    def settle(self, quiet: float = 0.3, timeout: float = 3.0) -> None:
        """Read until the program has written nothing for `quiet` seconds (a redraw finished)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.exited:
            before = len(self.raw)
            self._pump(quiet)
            if len(self.raw) == before:
                return

    def wait_exit(self, timeout: float = 8.0) -> int:
        """Drain output until the program exits; return its exit status."""
        self.wait_for(lambda: self.exited, "the program to exit", timeout)
        status = self.child.wait(timeout)
        self.close()
        assert status >= 0, f"killed by signal {-status}"
        return status

    # -- what is on screen -----------------------------------------------------------------

    def lines(self) -> list[str]:
        """The screen's rows, trailing blanks removed, empty rows at the bottom dropped."""
        rows = [row.rstrip() for row in self.screen.display]
        while rows and not rows[-1]:
            rows.pop()
        return rows

    def text(self) -> str:
        return "\n".join(self.lines())

    def cursor_line(self) -> str:
        return self.screen.display[self.screen.cursor.y].rstrip()

    def row_of(self, text: str) -> int:
        """Index of the only row containing `text`."""
        rows = [i for i, line in enumerate(self.lines()) if text in line]
        assert len(rows) == 1, f"{text!r} on rows {rows}; screen:\n{self.dump()}"
        return rows[0]

    def cells(self, row: int, start: int, length: int) -> list[pyte.screens.Char]:
        line = self.screen.buffer[row]
        return [line[x] for x in range(start, start + length)]

    def dump(self) -> str:
        cursor = self.screen.cursor
        body = "\n".join(f"{i:2}|{line}" for i, line in enumerate(self.lines()))
        return f"{body}\n(cursor at row {cursor.y}, column {cursor.x})"

    # -- typing ----------------------------------------------------------------------------

    def type(self, text: str) -> None:
        data = text.encode()
        while data:
            data = data[os.write(self._master, data) :]

    def close(self) -> None:
        if self.child.poll() is None:
            self.child.kill()
            self.child.wait(5)
        if self._master >= 0:
            os.close(self._master)
            self._master = -1
        self.exited = True


def rendered_style(style: str) -> pyte.screens.Char:
    """The cell a 256-colour terminal (TERM=xterm-256color) shows for a character Rich prints
    in `style`."""
    out = io.StringIO()
    Console(file=out, force_terminal=True, color_system="256").print(Text("x", style=style), end="")
    screen = pyte.Screen(4, 1)
    pyte.Stream(screen).feed(out.getvalue())
    return screen.buffer[0][0]
