"""The posts of one stream in flight: a task each, started in the order the stream was read (so
numbered in that order), at most MAX_IN_FLIGHT at once, so reading never waits for one post to
finish but a client cannot pile up unbounded work either. A post is never cancelled once
started: the stream waits for every one (`drain`), so its post needs no shield (see
`Hub.post`)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

MAX_IN_FLIGHT = 256


class InFlight:
    def __init__(self, on_error: Callable[[BaseException], None]) -> None:
        self._tasks: set[asyncio.Task[None]] = set()
        self._on_error = on_error

    async def start(self, post: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Start `post()`, first waiting while MAX_IN_FLIGHT are running."""
        while len(self._tasks) >= MAX_IN_FLIGHT:
            await asyncio.wait(self._tasks, return_when=asyncio.FIRST_COMPLETED)
        task = asyncio.create_task(post())
        self._tasks.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        error = None if task.cancelled() else task.exception()
        if error is not None:
            self._on_error(error)

    async def drain(self) -> None:
        """Wait for every post started (what they queue is then flushed with the session)."""
        if self._tasks:
            await asyncio.wait(self._tasks)
