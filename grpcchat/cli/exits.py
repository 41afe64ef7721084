"""Exit codes, and the one place library errors become a red line on stderr and an exit code.

Neither Typer nor Rich is imported here: `grpcchat send`'s fast path (`grpcchat.cli.fast`)
fails through these too. `fail` raises `SystemExit`, which ends a Typer command exactly as
`typer.Exit` does (same exit code, nothing else printed).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import sys
from collections.abc import Coroutine
from typing import Any, NoReturn, TypeVar

from grpcchat.cli.output import emit_error
from grpcchat.core.errors import ChatError, ConfigError, RemoteError

T = TypeVar("T")

# Exit codes, by what went wrong, so scripts can tell a retryable failure from a refusal.
EXIT_FAILURE = 1
EXIT_USAGE = 2  # a bad option, as Click exits for one
EXIT_UNAVAILABLE = 3  # server unreachable, going away or over a limit for now: retry later
EXIT_REJECTED = 4  # the server refused the input: retrying the same thing will not help
EXIT_TIMEOUT = 5
EXIT_UNAUTHENTICATED = 6
EXIT_INTERRUPTED = 130
_EXIT_BY_STATUS = {
    "UNAVAILABLE": EXIT_UNAVAILABLE,
    "CANCELLED": EXIT_UNAVAILABLE,
    # Still over the rate (or the room still busy) when --timeout ran out.
    "RESOURCE_EXHAUSTED": EXIT_UNAVAILABLE,
    "DEADLINE_EXCEEDED": EXIT_TIMEOUT,
    "UNAUTHENTICATED": EXIT_UNAUTHENTICATED,
    "PERMISSION_DENIED": EXIT_UNAUTHENTICATED,
}

# What writing the output can fail with besides EPIPE (a reader that went away, which ends
# the command quietly, as Click ends it): a full disk or quota, a file grown too large. (Not
# EIO: reading a terminal that went away fails with it too.)
_WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def exit_code(status: str) -> int:
    """The exit code for a gRPC status name the server (or the channel) answered with."""
    return _EXIT_BY_STATUS.get(status, EXIT_REJECTED)


def error_exit_code(error: ChatError) -> int:
    """The exit code for a library error: by its status if the server answered with one."""
    if isinstance(error, RemoteError):
        return exit_code(error.status)
    return EXIT_FAILURE if isinstance(error, ConfigError) else EXIT_REJECTED


def fail(message: str, code: int = EXIT_FAILURE) -> NoReturn:
    emit_error(message)
    raise SystemExit(code)


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a command's coroutine and return its result; expected failures become one red line
    and an exit code."""
    try:
        return asyncio.run(coroutine)
    except ChatError as error:
        from grpcchat.client.probe import explain

        error = explain(error)
        fail(str(error), error_exit_code(error))
    except KeyboardInterrupt:
        raise SystemExit(EXIT_INTERRUPTED) from None


def is_write_failure(error: BaseException) -> bool:
    return isinstance(error, OSError) and error.errno in _WRITE_ERRNOS


def fail_to_write(error: OSError) -> NoReturn:
    """`grpcchat ... > /dev/full`: one red line on stderr and exit 1, instead of a traceback.
    What is still buffered for stdout goes to /dev/null, so exiting does not fail again."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    what = f"cannot write {error.filename}" if error.filename else "cannot write the output"
    with contextlib.suppress(OSError):  # stderr is full too: the exit code has to say it
        emit_error(f"{what}: {error.strerror}")
    raise SystemExit(EXIT_FAILURE)
