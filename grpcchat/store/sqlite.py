"""History in one SQLite file: the embedded default, kept across restarts.

Every statement runs on one dedicated thread that owns the connection (`Database`), so the
event loop never waits on the disk and statements never interleave; `SqliteStore` only hands
calls to that thread. Times are stored as integer microseconds since the Unix epoch, UTC, so
they sort and compare in SQL and come back exactly as appended.

Group commit: `append` only queues its request (before it first suspends, so appends are
numbered in the order they were called) and makes sure one drain is handed to the thread at the
end of this turn of the event loop, so that every append the turn makes (a request's packed
sends, a burst of posts) joins it; the drain takes every request queued by then and stores
them, in queue order, in one transaction with one commit, then answers each caller (acks after
the commit). Each append of a group still ends exactly as it would alone: if anything fails
once the group holds the write lock (one append's statement, a full disk, the commit), the
group is rolled back and its appends are stored again one transaction each, in the same order,
so only the failing ones fail (failures are rare: the fast path pays nothing for them). Only
when the write lock cannot be taken at all (another process holds it past busy_timeout) does
every append of the group fail, storing nothing. Reads and the other calls are handed to the
same thread, in the order they are called (a drain not yet handed over goes first), so they
see every append queued before them.

Relations (edits, deletes, reactions) and replies are checked against their target and applied
to it by `Database._append`, inside the group's transaction, in queue order, so each sees every
append called before it. A refused one (the rules' ChatError: NotFound, PermissionDenied, ...)
is checked before anything of it is written, so it fails only its caller and the group goes on.

Each room's row in `rooms` carries how many messages it holds, changed in the same transaction
as every insert or delete of its messages, so a `rooms` page is a range of one small index.

Retention: messages beyond the count limit are deleted in the transaction that appends the one
pushing them out (a failure there rolls the whole append back), once a room per group, with the
room's row (a relation or reply first settles its room, so it sees the room as if stored alone).
Expired messages, expired dedup keys, and read markers expired or beyond `max_markers` (the
least recently moved) are deleted by the store's own job (`SqliteStore._maintain_forever`): at
open, then every MAINTENANCE_INTERVAL, in transactions of at most MAINTENANCE_BATCH rows so
appends interleave; a failed run is logged (grpcchat.store) and retried at the next interval.
Until a run, `read`, `rooms` and markers skip or count out anything expired, so what callers
see never depends on when the deletion last ran (only the markers' cap waits for it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import TypeVar

from grpcchat.core.errors import ChatError, StoreError
from grpcchat.core.history import Appended, Retention, RoomCount
from grpcchat.core.models import Message, Relation
from grpcchat.store.sqlite_database import AppendRequest, Database, to_us

T = TypeVar("T")

log = logging.getLogger("grpcchat.store")

# How often expired rows are deleted; in between, queries skip them.
MAINTENANCE_INTERVAL = 60.0
# A failing history file is logged at most this often (seconds).
FAILURE_LOG_EVERY = 10.0
_MAINTENANCE_FAILED = {
    "event": "history_maintenance_failed",
    "retry_seconds": MAINTENANCE_INTERVAL,
}


class SqliteStore:
    """The `HistoryStore` contract on a SQLite file, worked by one dedicated thread."""

    def __init__(self, database: Database, executor: ThreadPoolExecutor) -> None:
        self._db = database
        self._executor = executor
        self._closed = False
        self._loop = asyncio.get_running_loop()
        # Appends waiting for the next group, and whether a drain is handed to the thread and
        # has not yet taken them; shared with the thread, under the lock.
        self._queued: list[tuple[AppendRequest, asyncio.Future[Appended]]] = []
        self._queue_lock = threading.Lock()
        self._drain_pending = False
        # The drain this turn of the loop will hand to the thread (loop thread only).
        self._drain_handle: asyncio.Handle | None = None
        self._closing: asyncio.Task[None] | None = None
        self._failure_logged_at = float("-inf")
        self._maintenance = self._loop.create_task(
            self._maintain_forever(), name=f"grpcchat-store-maintenance {database.path}"
        )

    @classmethod
    async def open(cls, path: str, retention: Retention) -> SqliteStore:
        """Open (creating it and its directories if missing) the history file at `path`, and
        start deleting what has expired in it.

        Raises StoreError, naming the file and what to do, if it cannot be used.
        """
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="grpcchat-sqlite")
        try:
            database = await asyncio.get_running_loop().run_in_executor(
                executor, Database.open, Path(path), retention
            )
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(database, executor)

    @property
    def epoch(self) -> str:
        return self._db.epoch

    async def append(
        self,
        *,
        id: str,
        room: str,
        sender: str,
        text: str,
        sent_at: datetime,
        key: str = "",
        action: bool = False,
        reply_to: str = "",
        relation: Relation | None = None,
    ) -> Appended:
        """Queue the append, now (before suspending: appends are numbered in the order they
        were called), for the next group; return once the group has committed. A caller
        cancelled meanwhile does not take its append back. A relation (or reply) the rules
        refuse raises their ChatError, having stored nothing."""
        if self._closed:
            raise self._closed_error()
        request = (id, room, sender, text, to_us(sent_at), key, action, reply_to, relation)
        answer: asyncio.Future[Appended] = self._loop.create_future()
        with self._queue_lock:
            self._queued.append((request, answer))
            start_drain, self._drain_pending = not self._drain_pending, True
        if start_drain:
            # Not now: at once, the thread took the turn's first append alone and the rest
            # waited for it (in the unpaced bench, half the groups were of one; scheduled, a
            # group holds a whole request's sends, and the default server gained ~10%).
            self._drain_handle = self._loop.call_soon(self._hand_over_drain)
        return await answer

    async def read(
        self,
        room: str,
        *,
        after: int | None = None,
        before: int | None = None,
        limit: int = 100,
        newest_first: bool = False,
    ) -> list[Message]:
        return await self._run(partial(self._db.read, room, after, before, limit, newest_first))

    async def last_seq(self, room: str) -> int:
        return await self._run(partial(self._db.last_seq, room))

    async def mark_read(self, user: str, room: str, seq: int) -> int:
        return await self._run(partial(self._db.mark_read, user, room, seq))

    async def read_marker(self, user: str, room: str) -> int:
        return await self._run(partial(self._db.read_marker, user, room))

    async def unread(self, user: str, rooms: list[str]) -> dict[str, int]:
        return await self._run(partial(self._db.unread, user, rooms))

    async def rooms(self, *, after: str = "", limit: int = 100) -> list[RoomCount]:
        return await self._run(partial(self._db.rooms, after, limit))  # limit <= 0: []

    async def maintain(self) -> None:
        """Delete everything expired now, a batch per transaction; raises StoreError if a
        batch fails (the batches before it stay done). The store's own job calls this at
        open and then every MAINTENANCE_INTERVAL."""
        while await self._run(self._db.maintain):
            pass

    async def aclose(self) -> None:
        """Stop the maintenance job, finish the calls already handed to the thread, close the
        file, end the thread. Closing goes on if the caller is cancelled; every call waits for
        the same closing."""
        if self._closing is None:
            self._closed = True
            self._closing = self._loop.create_task(self._close())
        await asyncio.shield(self._closing)

    async def _close(self) -> None:
        self._maintenance.cancel()
        await asyncio.wait([self._maintenance])
        self._hand_over_drain()  # the appends already queued are stored before the file closes
        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._db.close)
        finally:
            self._executor.shutdown(wait=False)

    async def _maintain_forever(self) -> None:
        """Run `maintain` now and every MAINTENANCE_INTERVAL; a failure is one warning line,
        and the next run tries again. Nothing here ever reaches an append."""
        while True:
            try:
                await self.maintain()
            except StoreError as exc:
                if self._closed:
                    return  # closed before its first run (a server that failed to start)
                log.warning(
                    "deleting expired history failed (retrying in %gs): %s",
                    MAINTENANCE_INTERVAL,
                    exc,
                    extra=_MAINTENANCE_FAILED,
                )
            except Exception:
                log.exception(
                    "deleting expired history failed (retrying in %gs)",
                    MAINTENANCE_INTERVAL,
                    extra=_MAINTENANCE_FAILED,
                )
            await asyncio.sleep(MAINTENANCE_INTERVAL)

    def _hand_over_drain(self) -> None:
        if self._drain_handle is not None:
            self._drain_handle.cancel()
            self._drain_handle = None
            self._executor.submit(self._drain)

    async def _run(self, call: Callable[[], T]) -> T:
        """Run `call` on the store's thread, after every append queued before it; any failure
        of SQLite becomes StoreError."""
        if self._closed:
            raise self._closed_error()
        self._hand_over_drain()
        try:
            return await self._loop.run_in_executor(self._executor, call)
        except sqlite3.Error as exc:
            raise self._failed(exc) from exc

    def _drain(self) -> None:
        """On the store's thread: store every append queued so far as one group, then answer
        each caller on the loop (all in one callback)."""
        with self._queue_lock:
            group, self._queued = self._queued, []
            self._drain_pending = False
        outcomes: list[Appended | BaseException]
        try:
            outcomes = [
                self._append_failed(outcome)
                if isinstance(outcome, Exception) and not isinstance(outcome, ChatError)
                else outcome
                for outcome in self._db.append_group([request for request, _ in group])
            ]
        except Exception as exc:
            outcomes = [self._append_failed(exc) for _ in group]
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
            self._loop.call_soon_threadsafe(_answer, [answer for _, answer in group], outcomes)

    def _failed(self, exc: Exception) -> StoreError:
        error = StoreError(f"the server's history failed ({exc}); try again later")
        error.__cause__ = exc
        return error

    def _append_failed(self, exc: Exception) -> StoreError:
        """`_failed`, said in the log too (at most once every FAILURE_LOG_EVERY seconds): a
        full disk or a read-only remount under the server refused every send, told to the
        clients only, and the operator saw nothing."""
        now = time.monotonic()
        if now - self._failure_logged_at >= FAILURE_LOG_EVERY:
            self._failure_logged_at = now
            log.error(
                "the history file %s cannot take messages: %s (until it can, sends are refused "
                "with UNAVAILABLE)",
                self._db.path,
                exc,
                extra={"event": "history_failed"},
            )
        return self._failed(exc)

    def _closed_error(self) -> StoreError:
        return StoreError("the server's history is closed: the server is stopping")


def _answer(
    answers: list[asyncio.Future[Appended]], outcomes: list[Appended | BaseException]
) -> None:
    for answer, outcome in zip(answers, outcomes, strict=True):
        if answer.done():  # its caller was cancelled; the append stands
            continue
        if isinstance(outcome, BaseException):
            answer.set_exception(outcome)
        else:
            answer.set_result(outcome)
