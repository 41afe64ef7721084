"""A subscriber process: its share of the subscribers (and of the never-reading sessions) on one
event loop, each at its own server address (several nodes of one chat: spread round-robin by the
calling process), over one connection per server (reader grpc) or one per call (h2).

A native subscriber is a raw grpcchat `Subscribe` stream of the room, registered once its headers
arrive (the server sends them after the join). A v1 subscriber is a raw `Chat` stream, exactly as
the article's Go client opens it, that never writes (a half-close would end it): registered once
it has seen one of the pings the calling process sends while subscribers connect, since the
article's server says nothing before it has something to say.

Either way a response is not decoded: its bytes are scanned for this run's markers (frames), and
each (publisher, seq) is counted once per subscriber, with its latency from the send time in the
text. A subscriber whose stream ends is not reconnected: what it misses is lost, which is what
the server did to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import queue
import signal
import time
from collections.abc import AsyncIterator, Callable
from multiprocessing.queues import Queue

from grpcchat.bench import frames, h2, latency
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
from grpcchat.bench.rpc import SERVICE, Raw, ReadCall, status
from grpcchat.core.errors import ChatError, RemoteError

_REPORT_EVERY = 0.1  # seconds between a worker's progress reports
_IDLE_AFTER = 2.0  # a drain ends early once nothing has arrived for this long
# A marker is at most this long: a chunk of data that ends inside one keeps its tail for the next.
_MARKER_TAIL = frames.MIN_MESSAGE_SIZE
_NO_SUBSCRIBE = "the server at {addr} has no Subscribe (the article's server?): use --protocol v1"


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


class Subscriber:
    """One subscriber's counts: which (publisher, seq) it has seen, and how often twice."""

    __slots__ = ("addr", "connected", "delivered", "duplicates", "ended", "name", "seen")

    def __init__(self, name: str, addr: str = "") -> None:
        self.name = name
        self.addr = addr  # the server it follows the room on
        self.connected = False
        self.ended = False  # its stream ended before the worker left
        self.delivered = 0  # distinct (publisher, seq) seen
        self.duplicates = 0
        # publisher -> seen[seq] == 1 once that message arrived.
        self.seen: dict[int, bytearray] = {}

    def count(
        self, found: list[tuple[bytes, bytes, bytes]], now_ns: int, us: dict[int, int]
    ) -> int:
        """Count the markers found in one response (`pattern.findall`): new deliveries get their
        latency in `us` (whole microseconds -> count). Returns how many were new."""
        new = 0
        seen_by = self.seen
        for publisher, seq_text, sent_ns in found:
            seq = int(seq_text)
            p = int(publisher)
            seen = seen_by.get(p)
            if seen is None:
                seen = seen_by[p] = bytearray()
            if seq >= len(seen):
                seen.extend(bytes(seq + 4096 - len(seen)))
            if seen[seq]:
                self.duplicates += 1
                continue
            seen[seq] = 1
            new += 1
            micros = (now_ns - int(sent_ns)) // 1000
            us[micros] = us.get(micros, 0) + 1
        self.delivered += new
        return new

    def tally(self, finish: Finish) -> tuple[int, int]:
        """(delivered of the expected messages, deliveries of unconfirmed ones)."""
        got = 0
        for publisher, issued in enumerate(finish.issued):
            seen = self.seen.get(publisher)
            if seen is not None:
                got += seen[:issued].count(1)
        unconfirmed = 0
        for publisher, seq in finish.failed:
            seen = self.seen.get(publisher)
            if seen is not None and seq < len(seen) and seen[seq]:
                unconfirmed += 1
        return got - unconfirmed, self.delivered - (got - unconfirmed)


class _Slow:
    __slots__ = ("addr", "connected", "cut_off", "name")

    def __init__(self, name: str, addr: str) -> None:
        self.name = name
        self.addr = addr
        self.connected = False
        self.cut_off = False


class _Worker:
    """One subscriber process: follows the room with its share of the subscribers."""

    def __init__(self, spec: WorkerSpec, commands: Queue[Command], reports: Queue[Report]) -> None:
        self._spec = spec
        self._commands = commands
        self._reports = reports
        self._subscribers = [
            Subscriber(name, addr) for name, addr in zip(spec.names, spec.addrs, strict=True)
        ]
        self._slow = [
            _Slow(name, addr) for name, addr in zip(spec.slow_names, spec.slow_addrs, strict=True)
        ]
        self._pattern = frames.marker_pattern(spec.run)
        self._ping = frames.ping_marker(spec.run)
        # Latency in whole microseconds -> count. Counting here is a dict update per message;
        # the histogram is filled from it once, at the end, off the measured path.
        self._latency_us: dict[int, int] = {}
        self._last_delivery_ns = 0
        self._last_report: tuple[int, int] = (-1, -1)
        self._tasks: list[asyncio.Task[None]] = []
        # Reader grpc: one channel per server address.
        self._raws: dict[str, Raw] = {}

    def _raw(self, addr: str) -> Raw:
        if addr not in self._raws:
            self._raws[addr] = Raw(addr, self._spec.timeout)
        return self._raws[addr]

    async def run(self) -> None:
        if self._spec.reader == "h2":
            self._tasks = [asyncio.create_task(self._follow_h2(s)) for s in self._subscribers]
            self._tasks += [asyncio.create_task(self._hold_h2(s)) for s in self._slow]
        else:
            self._tasks = [
                asyncio.create_task(self._follow(self._raw(s.addr), s)) for s in self._subscribers
            ]
            self._tasks += [
                asyncio.create_task(self._hold(self._raw(s.addr), s)) for s in self._slow
            ]
        try:
            command = await self._next_command()
            if isinstance(command, Stop):
                return
            await self._drain(command)
            await self._leave()  # the counts are final from here on
            self._reports.put(self._result(command))
            # Stay until told to go, so the parent can still read this process's CPU time.
            await self._next_command()
        finally:
            await self._leave()
            for raw in self._raws.values():
                await raw.aclose()

    async def _leave(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=STOP_GRACE)
        self._tasks = []

    def _open(self, raw: Raw, name: str) -> ReadCall:
        if self._spec.protocol == "v1":
            return raw.chat()  # never written to: a half-close would end it
        return raw.subscribe(frames.subscribe_request(name, self._spec.room))

    async def _ended(self, call: ReadCall, addr: str) -> RemoteError | None:
        error = await status(call, addr)
        if error is not None and error.status == "UNIMPLEMENTED" and self._spec.protocol != "v1":
            return RemoteError(error.status, _NO_SUBSCRIBE.format(addr=addr))
        return error

    @contextlib.asynccontextmanager
    async def _stream(
        self, call: ReadCall, name: str, addr: str, opened: Callable[[], bool]
    ) -> AsyncIterator[None]:
        """Run the block on `call` until its stream ends, then cancel the call; raise why it
        ended if it never opened (`opened()` still false). A failure of the block while the
        call is still running is raised as it is."""
        try:
            yield
        except Exception:
            if not call.done():
                raise
        finally:
            call.cancel()
        error = await self._ended(call, addr)
        if not opened():
            raise error or BenchError(f"the server ended {name}'s stream at once")

    async def _follow(self, raw: Raw, subscriber: Subscriber) -> None:
        call = self._open(raw, subscriber.name)
        pattern = self._pattern
        ping = self._ping
        us = self._latency_us
        async with self._stream(
            call, subscriber.name, subscriber.addr, lambda: subscriber.connected
        ):
            if self._spec.protocol != "v1":
                await call.initial_metadata()  # sent once the join is done
                subscriber.connected = not call.done()
            while isinstance(data := await call.read(), bytes):
                now_ns = time.time_ns()
                if not subscriber.connected and ping in data:
                    subscriber.connected = True
                found = pattern.findall(data)
                if found and subscriber.count(found, now_ns, us):
                    self._last_delivery_ns = now_ns
        subscriber.ended = True

    async def _hold(self, raw: Raw, slow: _Slow) -> None:
        """A session that never reads: registered once its headers arrive (on the article's
        server, with the first ping), then left alone until the server ends it or we leave."""
        call = self._open(raw, slow.name)
        async with self._stream(call, slow.name, slow.addr, lambda: slow.connected):
            await call.initial_metadata()
            slow.connected = not call.done()
            await call.code()  # the server cutting it off ends the call
        slow.cut_off = True

    # -- reading straight off the socket (h2) ----------------------------------------------------

    async def _open_h2(
        self, name: str, addr: str, on_data: Callable[[bytes], None], reading: bool
    ) -> h2.H2Call:
        spec = self._spec
        if spec.protocol == "v1":
            path, request = SERVICE + "Chat", None
        else:
            path, request = SERVICE + "Subscribe", frames.subscribe_request(name, spec.room)
        try:
            return await h2.open_call(addr, path, request, on_data, reading=reading)
        except OSError as error:
            raise RemoteError(
                "UNAVAILABLE", f"cannot reach a chat server at {addr} ({error})"
            ) from None

    async def _registered(self, call: h2.H2Call, name: str, connected: Callable[[], bool]) -> None:
        """Wait until the call is registered (native: its response headers; v1: a ping seen);
        raise if it ends first."""
        while not connected():
            if self._spec.protocol != "v1" and call.responded.is_set():
                return
            if call.ended.done():
                raise BenchError(
                    f"the server ended {name}'s stream before it was registered: "
                    f"{call.ended.result()}"
                )
            await asyncio.sleep(POLL)

    def _scanner(
        self, subscriber: Subscriber | None, slow: _Slow | None
    ) -> Callable[[bytes], None]:
        """What to do with each chunk of a call's data: count its markers (a subscriber), or
        only look for a ping (a never-reading session, until it is registered)."""
        pattern = self._pattern
        ping = self._ping
        us = self._latency_us
        leftover = b""

        def scan(data: bytes) -> None:
            nonlocal leftover
            if leftover:
                data = leftover + data
            # A chunk may end inside a marker: keep that part for the next one. Markers hold no
            # '<' or '>' inside, so an unclosed last '<' starts one.
            cut = data.rfind(b"<", max(0, len(data) - _MARKER_TAIL))
            leftover = data[cut:] if cut >= 0 and data.find(b">", cut) < 0 else b""
            if subscriber is None:
                if slow is not None and not slow.connected and ping in data:
                    slow.connected = True
                return
            now_ns = time.time_ns()
            if not subscriber.connected and ping in data:
                subscriber.connected = True
            found = pattern.findall(data)
            if found and subscriber.count(found, now_ns, us):
                self._last_delivery_ns = now_ns

        return scan

    async def _follow_h2(self, subscriber: Subscriber) -> None:
        call = await self._open_h2(
            subscriber.name, subscriber.addr, self._scanner(subscriber, None), True
        )
        try:
            await self._registered(call, subscriber.name, lambda: subscriber.connected)
            subscriber.connected = True
            await call.ended
        finally:
            call.close()
        subscriber.ended = True

    async def _hold_h2(self, slow: _Slow) -> None:
        call = await self._open_h2(slow.name, slow.addr, self._scanner(None, slow), False)
        try:
            await self._registered(call, slow.name, lambda: slow.connected)
            slow.connected = True
            await call.ended
        finally:
            call.close()
        slow.cut_off = True

    def _delivered(self) -> int:
        return sum(s.delivered for s in self._subscribers)

    def _connected(self) -> int:
        return sum(s.connected for s in self._subscribers) + sum(s.connected for s in self._slow)

    def _check(self) -> None:
        """Raise what ended a subscriber early; leave if the parent is gone."""
        for task in self._tasks:
            if task.done() and not task.cancelled() and (error := task.exception()) is not None:
                raise error
        parent = multiprocessing.parent_process()
        if parent is not None and not parent.is_alive():
            raise SystemExit(1)

    def _report(self) -> None:
        """Send Progress, only when it changed: the parent drains one queue for all workers."""
        state = (self._connected(), self._delivered())
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
        """Wait until every subscriber has every message, or time's up (--drain), or nothing
        more has arrived for _IDLE_AFTER since the drain's last delivery. Only since one: a
        server slow to fan out (3 s here) delivers nothing for a while, then everything, and
        was counted as having lost it all."""
        deadline = time.monotonic() + finish.drain_timeout
        expected = finish.expected
        last_total, last_change = self._delivered(), None
        while True:
            self._check()
            self._report()
            if all(s.delivered >= expected or s.ended for s in self._subscribers):
                return
            now = time.monotonic()
            total = self._delivered()
            if total != last_total:
                last_total, last_change = total, now
            idle = last_change is not None and now - last_change >= _IDLE_AFTER
            if now >= deadline or idle:
                return
            await asyncio.sleep(POLL)

    def _result(self, finish: Finish) -> WorkerResult:
        expected = finish.expected * len(self._subscribers)
        delivered = unconfirmed = 0
        by_addr: dict[str, tuple[int, int, int]] = {}
        for subscriber in self._subscribers:
            got, extra = subscriber.tally(finish)
            delivered += got
            unconfirmed += extra
            count, there, lost = by_addr.get(subscriber.addr, (0, 0, 0))
            by_addr[subscriber.addr] = (count + 1, there + got, lost + finish.expected - got)
        return WorkerResult(
            worker=self._spec.index,
            expected=expected,
            delivered=delivered,
            lost=expected - delivered,
            duplicates=sum(s.duplicates for s in self._subscribers),
            unconfirmed=unconfirmed,
            disconnects=sum(s.ended for s in self._subscribers),
            slow_connected=sum(s.connected for s in self._slow),
            slow_cut_off=sum(s.cut_off for s in self._slow),
            last_delivery=self._last_delivery_ns / 1e9,
            histogram=latency.encode(self._latency_us),
            by_addr=by_addr,
        )
