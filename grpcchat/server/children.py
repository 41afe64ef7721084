"""Child processes a supervisor owns (`workers`, `localnats`): started apart from the
terminal's signals, ended with the supervisor, stopped with a deadline.

A child runs in its own process group, so a Ctrl-C at the terminal reaches only the supervisor,
which then stops the children in order (workers first, the broker last) instead of every
process getting the signal at once. On Linux a child also gets SIGTERM when the supervisor dies
without stopping it (killed), so no worker is left holding the port.
"""

from __future__ import annotations

import asyncio
import ctypes
import signal
import sys
from collections.abc import Callable
from typing import Any

_PR_SET_PDEATHSIG = 1
# Loaded once here: the hook below runs between fork and exec, where nothing may be loaded.
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None


def _end_with_parent() -> None:
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def spawn_options() -> dict[str, Any]:
    """`asyncio.create_subprocess_exec` keywords for an owned child (see the module)."""
    hook: Callable[[], None] | None = _end_with_parent if _LIBC is not None else None
    return {"start_new_session": True, "preexec_fn": hook}


async def stop(process: asyncio.subprocess.Process, seconds: float) -> None:
    """SIGTERM, then SIGKILL if it has not exited within `seconds`."""
    if process.returncode is None:
        process.terminate()
        await wait_or_kill(process, seconds)


async def wait_or_kill(process: asyncio.subprocess.Process, seconds: float) -> None:
    """Wait up to `seconds` for it to exit, then kill it and wait for that."""
    try:
        await asyncio.wait_for(process.wait(), seconds)
    except TimeoutError:
        if process.returncode is None:
            process.kill()
        await process.wait()
