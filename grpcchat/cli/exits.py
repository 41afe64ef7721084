"""Exit codes, and the one place library errors become a red line on stderr and an exit code.

Neither Typer nor Rich is imported here: `grpcchat send`'s fast path (`grpcchat.cli.fast`)
fails through these too. `fail` raises `SystemExit`, which ends a Typer command exactly as
`typer.Exit` does (same exit code, nothing else printed).
"""

from __future__ import annotations

import asyncio
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


def exit_code(status: str) -> int:
    """The exit code for a gRPC status name the server (or the channel) answered with."""
    return _EXIT_BY_STATUS.get(status, EXIT_REJECTED)


def fail(message: str, code: int = EXIT_FAILURE) -> NoReturn:
    emit_error(message)
    raise SystemExit(code)


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a command's coroutine and return its result; expected failures become one red line
    and an exit code."""
    try:
        return asyncio.run(coroutine)
    except RemoteError as error:
        fail(str(error), exit_code(error.status))
    except ConfigError as error:
        fail(str(error), EXIT_FAILURE)
    except ChatError as error:
        fail(str(error), EXIT_REJECTED)
    except KeyboardInterrupt:
        raise SystemExit(EXIT_INTERRUPTED) from None
