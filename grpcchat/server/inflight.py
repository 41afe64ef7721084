"""The posts of one stream in flight: a task each, started in the order the stream was read (so
numbered in that order), a bounded number at once (`in_flight_limit`), so reading never waits
for one post to finish but a client cannot pile up unbounded work either. A post is never
cancelled once started: the stream waits for every one (`drain`), so its post needs no shield
(see `Hub.post`).

A post refused for now (over the rate limit, or its room busy) holds the ones behind it on its
stream (`Hold`): they are refused too, until the client sends it again, so a stream's messages
are stored in the order it wrote them even though the client retries each refusal on a timer
of its own. A hold whose send never comes back lapses HOLD_GRACE after its retry time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import Any

MAX_IN_FLIGHT = 256
HOLD_GRACE = 2.0
# What a send refused behind a held one is told to wait at least: its retry must not spin.
HELD_RETRY = 0.05


def in_flight_limit(queue_size: int) -> int:
    """How many posts a stream may have in flight with a session queue of `queue_size`: each
    may queue two events for its own session (its ack, and its echo in a room the session is
    in), on top of the half-full queue at which the stream stops reading (see `Session`), and
    a quarter of the queue stays for everything else its rooms say."""
    return max(1, min(MAX_IN_FLIGHT, queue_size // 8))


class InFlight:
    def __init__(
        self, on_error: Callable[[BaseException], None], limit: int = MAX_IN_FLIGHT
    ) -> None:
        self._tasks: set[asyncio.Task[None]] = set()
        self._on_error = on_error
        self._limit = limit

    async def start(self, post: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Start `post()`, first waiting while the limit of posts are running."""
        while len(self._tasks) >= self._limit:
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


class Hold:
    """The send, refused for now, that a stream's later sends wait behind (see the module)."""

    def __init__(self) -> None:
        self.key = ""
        self._retry_at = 0.0

    def wait(self, key: str) -> float | None:
        """For a send about to be posted: None if it may go (it is the held one, coming back,
        or nothing is held), else the seconds it should wait."""
        if not self.key:
            return None
        now = time.monotonic()
        if key == self.key or now > self._retry_at + HOLD_GRACE:
            self.key = ""
            return None
        return max(self._retry_at - now, HELD_RETRY)

    def hold(self, key: str, retry_after: float) -> None:
        """`key` was refused for `retry_after` seconds: the sends behind it wait for it."""
        if not self.key:
            self.key, self._retry_at = key, time.monotonic() + retry_after
