"""Printing a `StyledLine`: through Rich on a terminal, with plain writes anywhere else.

Rich writes to a file that is not a terminal the text with no styles and, with `soft_wrap`,
no wrapping: the characters, every control shown as a visible one (`lines.visible`). Writing
those here gives the same bytes without importing Rich (tens of milliseconds on every
scripted `grpcchat send`). What Rich would treat otherwise (a tab it expands, `FORCE_COLOR` or
`TTY_COMPATIBLE` set, a character the stream cannot encode) still goes through Rich.
"""

from __future__ import annotations

import os
import sys
from typing import TextIO

from grpcchat.cli.lines import StyledLine, error_line, visible

# Environment variables with which Rich may treat a pipe as a terminal.
_RICH_TERMINAL_VARIABLES = ("FORCE_COLOR", "TTY_COMPATIBLE")


def emit(line: StyledLine, *, err: bool = False) -> None:
    """Print `line` on stdout (on stderr with `err`) as the command's consoles would."""
    stream = sys.stderr if err else sys.stdout
    text = visible(line.text)
    if "\t" not in text and _plain(stream):
        try:
            stream.write(text + "\n")
        except UnicodeEncodeError:
            pass  # nothing was written: Rich explains it
        else:
            stream.flush()
            return
    from grpcchat.cli.consoles import console, err_console
    from grpcchat.cli.render import styled

    (err_console if err else console).print(styled(line), soft_wrap=True)


def emit_error(message: str) -> None:
    """`error: MESSAGE` in bold red on stderr."""
    emit(error_line(message), err=True)


def _plain(stream: TextIO) -> bool:
    """Whether Rich would write to `stream` as to a file rather than a terminal."""
    if any(name in os.environ for name in _RICH_TERMINAL_VARIABLES):
        return False
    try:
        return not stream.isatty()
    except (AttributeError, ValueError):
        return False
