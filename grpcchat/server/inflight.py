"""The posts of one stream in flight: a task each, started in the order the stream was read (so
numbered in that order), a bounded number at once (`in_flight_limit`), so reading never waits
for one post to finish but a client cannot pile up unbounded work either. A post is never
cancelled once started: the stream waits for every one (`drain`), so its post needs no shield
(see `Hub.post`).

A post refused for now (over the rate limit, or its room busy) holds the ones behind it on its
stream (`Hold`): they are refused too, and then let through one at a time in the order they
were written, each once the one before it has come back, so a stream's messages are stored in
the order it wrote them even though the client retries each refusal on a timer of its own. A
held send that never comes back lapses HOLD_GRACE after its turn, and the next one's turn
begins. The article's `Chat` stream cannot refuse a message, so its posts wait instead
(`WaitingLine`): a throttled post is tried again before any later one, and those go one at a
time in the order read."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Coroutine
from typing import Any

MAX_IN_FLIGHT = 256
HOLD_GRACE = 2.0
# Held sends remembered a stream (each key at most 128 bytes); more than a client with
# MAX_IN_FLIGHT sends in flight has waiting.
MAX_HELD = 1024
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
    """The sends, refused for now, that a stream's later sends wait behind, in the order they
    were written (see the module). At most MAX_HELD are remembered: a client writing more
    while held still has them refused, in no particular order among themselves."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._keys: OrderedDict[str, None] = OrderedDict()
        self._turn_at = 0.0  # when the first of `_keys` may be written again

    @property
    def key(self) -> str:
        """The send whose turn it is ("" for none)."""
        return next(iter(self._keys), "")

    def wait(self, key: str) -> float | None:
        """For a send about to be posted: None if it may go (its turn has come, or nothing is
        held), else the seconds it should wait."""
        now = self._clock()
        while self._keys and now > self._turn_at + HOLD_GRACE:
            self._keys.popitem(last=False)  # it never came back: the next one's turn
            self._turn_at += HOLD_GRACE
        if not self._keys:
            return None
        if key == self.key:
            del self._keys[key]
            self._turn_at = now  # the next one's turn
            return None
        if len(self._keys) < MAX_HELD:
            self._keys[key] = None
        return max(self._turn_at - now, HELD_RETRY)

    def hold(self, key: str, retry_after: float) -> None:
        """`key`, which was allowed to go, was refused for `retry_after` seconds: it is first
        in line again, and the sends behind it wait for it."""
        self._keys[key] = None
        self._keys.move_to_end(key, last=False)
        self._turn_at = self._clock() + retry_after


class WaitingLine:
    """The article's `Chat` stream's posts while one of them is throttled (over the rate, or
    its room busy). That one holds the line and is tried again until it is over; the posts
    read after it wait in the line and then go one at a time, in the order read, each once the
    one before it is over, until the line is empty. Retried on timers of their own, a later
    post took the next token first and was stored ahead (38 pairs out of order in 200).

    A post calls `wait_turn` first, `hold` when it is throttled, and `done` when it is over if
    it held the line (`wait_turn` returned True, or it called `hold`). At most one post holds
    it: a post that finds the line free is checked against the rate in the same step, so the
    first one throttled holds the line before any later post looks at it."""

    def __init__(self) -> None:
        self._waiting: deque[asyncio.Future[None]] = deque()
        self._held = False

    async def wait_turn(self) -> bool:
        """Wait while the line is held; True if this post now holds it."""
        if not self._held:
            return False
        turn = asyncio.get_running_loop().create_future()
        self._waiting.append(turn)
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():  # its turn came: pass it on
                self.done()
            raise
        return True

    def hold(self) -> None:
        self._held = True

    def done(self) -> None:
        """The post holding the line is over: the next one waiting holds it, or nobody."""
        while self._waiting:
            turn = self._waiting.popleft()
            if not turn.done():  # (a post cancelled while waiting has left)
                turn.set_result(None)
                return
        self._held = False
