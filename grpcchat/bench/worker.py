"""A subscriber process: its share of the sessions, on one event loop, following the room.

Each subscriber is `ChatClient(...).session(name, room).events()` exactly as `grpcchat join`
uses it, so what is measured is what a user gets.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import queue
import signal
import time
from dataclasses import dataclass, field
from multiprocessing.queues import Queue

from grpcchat.bench import latency
from grpcchat.bench.config import STOP_GRACE, BenchError
from grpcchat.bench.messages import (
    POLL,
    Command,
    Finish,
    Progress,
    Report,
    Stop,
    WorkerFailed,
    WorkerResult,
    WorkerSpec,
)
from grpcchat.client import ChatClient, Connected, Reconnecting
from grpcchat.client.config import ClientConfig
from grpcchat.core.errors import ChatError, RemoteError
from grpcchat.core.models import Message

_REPORT_EVERY = 0.1  # seconds between a worker's progress reports
_IDLE_AFTER = 2.0  # a drain ends early once nothing has arrived for this long


def worker_main(spec: WorkerSpec, commands: Queue[Command], reports: Queue[Report]) -> None:
    """Entry point of a subscriber process: any failure goes back as a WorkerFailed report."""
    # Ctrl-C reaches the whole process group; the parent decides when workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        asyncio.run(_Worker(spec, commands, reports).run())
    except RemoteError as error:
        reports.put(WorkerFailed(spec.index, error.status, str(error)))
    except ChatError as error:
        reports.put(WorkerFailed(spec.index, None, str(error)))
    except Exception as error:
        message = f"subscriber process {spec.index} failed: {type(error).__name__}: {error}"
        reports.put(WorkerFailed(spec.index, None, message))


@dataclass(slots=True)
class _Subscriber:
    name: str
    connected: bool = False
    delivered: int = 0
    duplicates: int = 0
    disconnects: int = 0
    # seen[k] is 1 once the message with local index k (see _Worker._ids) arrived.
    seen: bytearray = field(default_factory=bytearray)


class _Worker:
    """One subscriber process: follows the room with its share of the sessions."""

    def __init__(self, spec: WorkerSpec, commands: Queue[Command], reports: Queue[Report]) -> None:
        self._spec = spec
        self._commands = commands
        self._reports = reports
        self._subscribers = [_Subscriber(name) for name in spec.names]
        # Message id -> a small dense index, shared by this process's subscribers.
        self._ids: dict[str, int] = {}
        # Latency in whole microseconds -> count. Counting here is a dict update per message;
        # the histogram is filled from it once, at the end, off the measured path.
        self._latency_us: dict[int, int] = {}
        self._last_delivery = 0.0
        self._last_report: tuple[int, int] = (-1, -1)
        self._tasks: list[asyncio.Task[None]] = []

    async def run(self) -> None:
        self._tasks = [asyncio.create_task(self._follow(s)) for s in self._subscribers]
        try:
            command = await self._next_command()
            if isinstance(command, Stop):
                return
            await self._drain(command)
            await self._leave()  # the counts are final from here on
            self._reports.put(self._result())
            # Stay until told to go, so the parent can still read this process's CPU time.
            await self._next_command()
        finally:
            await self._leave()

    async def _leave(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=STOP_GRACE)
        self._tasks = []

    async def _follow(self, subscriber: _Subscriber) -> None:
        spec = self._spec
        prefix = spec.sender_prefix
        ids = self._ids
        counts = self._latency_us
        async with ChatClient(ClientConfig(addr=spec.addr, timeout=spec.timeout)) as client:
            async for event in client.session(subscriber.name, spec.room).events():
                if isinstance(event, Message):
                    if not event.sender.startswith(prefix):
                        continue
                    received = time.time()
                    key = ids.setdefault(event.id, len(ids))
                    seen = subscriber.seen
                    if key >= len(seen):
                        seen.extend(bytes(key + 4096 - len(seen)))
                    if seen[key]:
                        subscriber.duplicates += 1
                        continue
                    seen[key] = 1
                    subscriber.delivered += 1
                    self._last_delivery = received
                    micros = int((received - event.sent_at.timestamp()) * 1_000_000)
                    counts[micros] = counts.get(micros, 0) + 1
                elif isinstance(event, Reconnecting):
                    subscriber.disconnects += 1
                elif isinstance(event, Connected):
                    if event.legacy:
                        raise BenchError(
                            f"the server at {spec.addr} speaks only the article's Chat stream; "
                            "bench needs a grpcchat server"
                        )
                    subscriber.connected = True
                # Presence and join events are not what is measured.

    def _delivered(self) -> int:
        return sum(s.delivered for s in self._subscribers)

    def _check(self) -> None:
        """Raise what ended a session early; leave if the parent is gone."""
        for task in self._tasks:
            if task.done() and not task.cancelled() and (error := task.exception()) is not None:
                raise error
        parent = multiprocessing.parent_process()
        if parent is not None and not parent.is_alive():
            raise SystemExit(1)

    def _report(self) -> None:
        """Send Progress, only when it changed: the parent drains one queue for all workers."""
        state = (sum(s.connected for s in self._subscribers), self._delivered())
        if state != self._last_report:
            self._last_report = state
            self._reports.put(Progress(self._spec.index, *state))

    async def _next_command(self) -> Command:
        next_report = 0.0
        while True:
            self._check()
            now = time.monotonic()
            if now >= next_report:
                self._report()
                next_report = now + _REPORT_EVERY
            try:
                return self._commands.get_nowait()
            except queue.Empty:
                await asyncio.sleep(POLL)

    async def _drain(self, finish: Finish) -> None:
        """Wait until every subscriber has every message, or nothing more arrives, or time's up."""
        start = time.monotonic()
        deadline = start + finish.drain_timeout
        idle_after = min(_IDLE_AFTER, finish.drain_timeout)
        last_total, last_change = -1, start
        while True:
            self._check()
            self._report()
            if all(s.delivered >= finish.expected for s in self._subscribers):
                return
            now = time.monotonic()
            total = self._delivered()
            if total != last_total:
                last_total, last_change = total, now
            if now >= deadline or now - last_change >= idle_after:
                return
            await asyncio.sleep(POLL)

    def _result(self) -> WorkerResult:
        return WorkerResult(
            worker=self._spec.index,
            delivered=self._delivered(),
            duplicates=sum(s.duplicates for s in self._subscribers),
            disconnects=sum(s.disconnects for s in self._subscribers),
            last_delivery=self._last_delivery,
            histogram=latency.encode(self._latency_us),
        )
