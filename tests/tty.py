"""A program in a pseudo-terminal, rendered by pyte: tests assert on what a person would see.

pexpect gives the raw byte stream; prompt_toolkit redraws its input line with cursor moves and
erases, so the bytes alone cannot say what is on screen. pyte interprets them into a grid of
cells (text, colour, bold) and answers the terminal's cursor-position queries like a real one.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Sequence

import pexpect
import pyte
from rich.console import Console
from rich.text import Text

ROWS = 24
COLUMNS = 120


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
        self.child = pexpect.spawn(
            argv[0], list(argv[1:]), env=env, dimensions=(rows, columns), timeout=10
        )
        self.screen.reply = self.child.send
        self.raw = b""
        self.exited = False

    # -- reading ---------------------------------------------------------------------------

    def _pump(self, timeout: float) -> None:
        """Feed whatever the program writes within `timeout` seconds (returns on first data)."""
        if self.exited:
            return
        try:
            data = self.child.read_nonblocking(65536, timeout=timeout)
        except pexpect.TIMEOUT:
            return
        except pexpect.EOF:
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
        self.child.wait()
        self.child.close()
        status = self.child.exitstatus
        assert status is not None, f"killed by signal {self.child.signalstatus}"
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
        self.child.send(text)

    def close(self) -> None:
        if self.child.isalive():
            self.child.terminate(force=True)
        self.child.close()


def rendered_style(style: str) -> pyte.screens.Char:
    """The cell a 256-colour terminal (TERM=xterm-256color) shows for a character Rich prints
    in `style`."""
    out = io.StringIO()
    Console(file=out, force_terminal=True, color_system="256").print(Text("x", style=style), end="")
    screen = pyte.Screen(4, 1)
    pyte.Stream(screen).feed(out.getvalue())
    return screen.buffer[0][0]
