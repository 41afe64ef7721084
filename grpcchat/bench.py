"""A built-in load generator: many subscribers and a few publishers against a real server.

    result = await run_bench(BenchConfig(subscribers=50, rate=200, duration=10), on_progress)
    console.print(render_result(result))

The load does not share a process with what it measures:

- the server runs in its own process: the one at `addr`, or, with `addr=None`,
  `python -m grpcchat serve` with SERVER_FLAGS (a free port, history in memory, no rate limit),
  started here and stopped at the end;
- subscribers are spread over `processes` worker processes (spawned: a script calling run_bench
  needs the usual `if __name__ == "__main__":` guard), one event loop each, each subscriber a
  `ChatClient(...).session(name, room).events()` exactly as `grpcchat join` uses it;
- publishers run in the calling process and post with `ChatClient.send`, paced to `rate`.

Publishing starts only once every subscriber is connected (in the room), so every message sent
must reach every subscriber: `lost` and `duplicates` are correctness checks, not noise. Latency
is end to end: from the server's timestamp on the message (taken when it accepted it) to the
moment the subscriber's `events()` yields it. That needs one clock: run the benchmark on the
server's machine (a server elsewhere adds the clocks' difference to every latency).

The messages are real: they land in `room` of the server at `addr` (and in its history), so
point it at a room nobody uses. Every wait is bounded, and worker processes and a server started
here are stopped on any exit, including an error or Ctrl-C (cancellation).
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import queue
import re
import secrets
import signal
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import wait as wait_for_any
from multiprocessing.context import SpawnProcess
from multiprocessing.queues import Queue
from typing import Any

from hdrh.histogram import HdrHistogram  # type: ignore[import-untyped]
from rich.table import Table
from rich.text import Text

from grpcchat.client import ChatClient, Connected, Reconnecting
from grpcchat.config import ClientConfig
from grpcchat.errors import ChatError, InvalidInput, RemoteError
from grpcchat.models import Message
from grpcchat.validation import MAX_TEXT_LENGTH, check_room

# Progress phases, in order. `done` goes from 0.0 to 1.0 within each.
PHASE_SERVER = "server"  # starting the server process (only when addr is None)
PHASE_CONNECT = "connect"  # subscribers connecting: fraction connected
PHASE_PUBLISH = "publish"  # publishing: fraction of the duration elapsed
PHASE_DRAIN = "drain"  # waiting for in-flight deliveries: fraction delivered
PHASES = (PHASE_SERVER, PHASE_CONNECT, PHASE_PUBLISH, PHASE_DRAIN)

ProgressCallback = Callable[[str, float], None]

# Latencies are recorded in microseconds, from 1 µs to 10 minutes, to 3 significant digits.
_LOWEST_US = 1
_HIGHEST_US = 600_000_000
_SIGNIFICANT_DIGITS = 3

_POLL = 0.02  # seconds between looks at the worker queues
_REPORT_EVERY = 0.1  # seconds between a worker's progress reports
_IDLE_AFTER = 2.0  # a drain ends early once nothing has arrived for this long
_STOP_GRACE = 3.0  # seconds a worker or the server gets to exit before it is killed
_SERVER_START_TIMEOUT = 30.0
_LISTENING = re.compile(r"listening on (\S+:\d+)")

# How the benchmark starts its own server: loopback, a free port, history in memory (not the
# user's history database), no per-user rate limit (publishers post far faster than a person),
# a short drain.
SERVER_FLAGS = (
    "--host",
    "127.0.0.1",
    "--port",
    "0",
    "--store",
    "memory://",
    "--rate",
    "0",
    "--grace",
    "1",
    "--quiet",
)


class BenchError(ChatError):
    """The benchmark could not run: the server did not start, subscribers did not connect, a
    worker process failed."""


def _available_cpus() -> int:
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


@dataclass(frozen=True, slots=True)
class BenchConfig:
    """What to run. Invalid values raise ValueError."""

    # Server to load, host:port; None starts `grpcchat serve` in a process of its own.
    addr: str | None = None
    subscribers: int = 50
    publishers: int = 1
    # Messages per second per publisher; 0 sends as fast as the server answers (each publisher
    # keeping `max_in_flight` sends outstanding).
    rate: float = 200.0
    # Seconds of publishing.
    duration: float = 10.0
    room: str = "bench"
    # Worker processes hosting the subscribers; None: one per CPU, at most one per subscriber.
    processes: int | None = None
    # Length of each message's text, in characters (ASCII, so also bytes).
    message_size: int = 64
    # Sends each publisher may have waiting for an answer; 1 makes each wait for the previous.
    max_in_flight: int = 16
    # Seconds for every subscriber to connect before publishing starts.
    connect_timeout: float = 30.0
    # Seconds to wait, after the last send, for messages still on their way.
    drain_timeout: float = 10.0
    # Deadline of one send, in seconds.
    send_timeout: float = 10.0
    # Extra `grpcchat serve` flags for the server started when addr is None; they come after
    # SERVER_FLAGS, so they override them (e.g. ("--store", "sqlite:///tmp/bench.db")).
    server_args: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.addr is not None and not self.addr.strip():
            raise ValueError("addr must be host:port, or None to start a server")
        if self.subscribers < 1:
            raise ValueError("subscribers must be at least 1")
        if self.publishers < 1:
            raise ValueError("publishers must be at least 1")
        if not self.rate >= 0:  # also refuses NaN
            raise ValueError("rate must be 0 (as fast as possible) or more messages per second")
        if not 0 < self.duration < float("inf"):
            raise ValueError("duration must be a positive number of seconds")
        try:
            check_room(self.room)
        except InvalidInput as error:
            raise ValueError(str(error)) from None
        if self.processes is not None and not 1 <= self.processes <= self.subscribers:
            raise ValueError("processes must be between 1 and the number of subscribers")
        if self.max_in_flight < 1:
            raise ValueError("max in flight must be at least 1")
        if not 1 <= self.message_size <= MAX_TEXT_LENGTH:
            raise ValueError(f"message size must be between 1 and {MAX_TEXT_LENGTH}")
        for name in ("connect_timeout", "send_timeout"):
            if not 0 < getattr(self, name) < float("inf"):
                raise ValueError(f"{name.replace('_', ' ')} must be a positive number of seconds")
        if not 0 <= self.drain_timeout < float("inf"):
            raise ValueError("drain timeout must not be negative")
        if self.server_args and self.addr is not None:
            raise ValueError("server flags only apply to a server the benchmark starts (no addr)")
        if not all(isinstance(arg, str) for arg in self.server_args):
            raise ValueError("server flags must be strings")

    @property
    def worker_processes(self) -> int:
        """How many worker processes host the subscribers."""
        if self.processes is not None:
            return self.processes
        return min(self.subscribers, _available_cpus())


@dataclass(frozen=True, slots=True)
class Latency:
    """End-to-end latency percentiles, in milliseconds."""

    p50: float
    p90: float
    p99: float
    max: float


@dataclass(frozen=True, slots=True)
class CpuUsage:
    """CPU used while publishing and draining, in percent of one core (200.0 = two cores busy).
    None where it cannot be measured (not Linux, or a server this run did not start)."""

    server: float | None
    workers: float | None  # all subscriber processes together
    publishers: float  # the calling process


@dataclass(frozen=True, slots=True)
class BenchResult:
    config: BenchConfig
    addr: str  # the server that was measured
    sent: int  # messages the server accepted
    send_errors: int  # sends that failed (not counted in `sent`)
    expected: int  # sent x subscribers
    delivered: int  # distinct (subscriber, message) deliveries
    lost: int  # expected - delivered
    duplicates: int  # a subscriber got a message it already had
    # Reconnecting events seen by subscribers: streams the server cut (a slow consumer) or lost.
    disconnects: int
    publish_elapsed: float  # seconds from the first send to the last one's answer
    elapsed: float  # seconds from the first send to the last delivery
    sent_per_second: float
    deliveries_per_second: float  # delivered / elapsed
    latency: Latency | None  # None when nothing was delivered
    cpu: CpuUsage

    @property
    def ok(self) -> bool:
        """Everything sent reached every subscriber exactly once."""
        return self.lost == 0 and self.duplicates == 0 and self.send_errors == 0


async def run_bench(
    config: BenchConfig, on_progress: ProgressCallback | None = None
) -> BenchResult:
    """Run one benchmark and return its result.

    `on_progress(phase, done)` is called from the event loop as each phase of PHASES advances.
    Raises BenchError when the run cannot be carried out and RemoteError when the server refuses
    it (e.g. unreachable: status "UNAVAILABLE").
    """
    progress: ProgressCallback = on_progress or (lambda _phase, _done: None)
    run_id = secrets.token_hex(3)
    prefix = f"bench-{run_id}-"
    async with contextlib.AsyncExitStack() as stack:
        server: _ServerProcess | None = None
        if config.addr is None:
            progress(PHASE_SERVER, 0.0)
            server = _ServerProcess((*SERVER_FLAGS, *config.server_args))
            stack.push_async_callback(server.stop)
            await server.start(_SERVER_START_TIMEOUT)
            progress(PHASE_SERVER, 1.0)
            addr = server.addr
        else:
            addr = config.addr

        def check_server() -> None:
            if server is not None:
                server.check()

        names = [f"{prefix}s{i}" for i in range(config.subscribers)]
        count = config.worker_processes
        specs = [
            _WorkerSpec(
                index=i,
                addr=addr,
                room=config.room,
                names=tuple(names[i::count]),
                sender_prefix=f"{prefix}p",
                timeout=config.connect_timeout,
            )
            for i in range(count)
        ]
        pool = _WorkerPool(specs)
        stack.push_async_callback(pool.close)
        pool.start()

        def connecting() -> None:
            check_server()
            progress(PHASE_CONNECT, pool.connected / config.subscribers)

        progress(PHASE_CONNECT, 0.0)
        await pool.wait(
            lambda: pool.connected >= config.subscribers,
            config.connect_timeout,
            connecting,
            lambda: BenchError(
                f"only {pool.connected} of {config.subscribers} subscribers connected to "
                f"{addr} within {config.connect_timeout:g}s"
            ),
        )
        progress(PHASE_CONNECT, 1.0)

        cpu_before = _cpu_snapshot(server, pool)
        progress(PHASE_PUBLISH, 0.0)
        started = time.time()

        def publishing_check() -> None:
            check_server()
            pool.poll()  # a subscriber process that fails ends the run now

        publishing = await _publish(config, addr, f"{prefix}p", progress, publishing_check)
        publish_elapsed = time.time() - started
        progress(PHASE_PUBLISH, 1.0)
        if publishing.sent == 0 and publishing.first_error is not None:
            raise publishing.first_error

        expected = publishing.sent * config.subscribers
        # CPU is counted up to the last delivery (seen here within a report interval), not over
        # the idle end of a drain that waits for lost messages.
        cpu_after: _CpuSnapshot | None = None
        window = 0.0

        def draining() -> None:
            nonlocal cpu_after, window
            check_server()
            progress(PHASE_DRAIN, min(1.0, pool.delivered / expected) if expected else 1.0)
            if cpu_after is None and (pool.delivered >= expected or pool.finished):
                cpu_after = _cpu_snapshot(server, pool)
                window = time.time() - started

        pool.finish(publishing.sent, config.drain_timeout)
        progress(PHASE_DRAIN, 0.0)
        await pool.wait(
            lambda: pool.finished,
            config.drain_timeout + _STOP_GRACE + 2.0,
            draining,
            lambda: BenchError("the subscriber processes did not report their results in time"),
        )
        progress(PHASE_DRAIN, 1.0)
        assert cpu_after is not None  # taken once the pool finished at the latest

    reports = pool.results
    delivered = sum(r.delivered for r in reports)
    last_delivery = max((r.last_delivery for r in reports), default=0.0)
    elapsed = last_delivery - started if delivered else publish_elapsed
    elapsed = max(elapsed, 1e-9)
    return BenchResult(
        config=config,
        addr=addr,
        sent=publishing.sent,
        send_errors=publishing.errors,
        expected=expected,
        delivered=delivered,
        lost=max(0, expected - delivered),
        duplicates=sum(r.duplicates for r in reports),
        disconnects=sum(r.disconnects for r in reports),
        publish_elapsed=publish_elapsed,
        elapsed=elapsed,
        sent_per_second=publishing.sent / max(publish_elapsed, 1e-9),
        deliveries_per_second=delivered / elapsed,
        latency=_merge_latency([r.histogram for r in reports]),
        cpu=_cpu_usage(cpu_before, cpu_after, window),
    )


def render_result(result: BenchResult) -> Table:
    """The result as a Rich table: metric, value, note."""
    config = result.config
    rate = "max rate" if config.rate == 0 else f"{config.rate:g} msg/s each"
    table = Table(
        title=(
            f"{config.subscribers} subscribers x {config.publishers} "
            f"publisher{'s' if config.publishers != 1 else ''}, {rate}, "
            f"{config.duration:g}s, {config.message_size} B messages"
        ),
        show_header=False,
        title_justify="left",
    )
    table.add_column("metric", style="bold")
    table.add_column("value", justify="right")
    table.add_column("note", style="dim")

    def flag(value: int, bad: str) -> Text:
        return Text(f"{value:,}", style=bad if value else "green")

    table.add_row("server", result.addr, "started for this run" if config.addr is None else "")
    sent_note = f"{result.sent_per_second:,.0f} msg/s over {result.publish_elapsed:.1f}s"
    target = config.rate * config.publishers
    behind = bool(target) and result.sent_per_second < 0.95 * target
    if behind:
        sent_note += f", short of the {target:,.0f} asked: sends answered slowly or rate-limited"
    table.add_row("sent", f"{result.sent:,}", Text(sent_note, style="yellow" if behind else ""))
    if result.send_errors:
        table.add_row("send errors", flag(result.send_errors, "bold red"), "")
    table.add_row("delivered", f"{result.delivered:,}", f"of {result.expected:,} expected")
    table.add_row("lost", flag(result.lost, "bold red"), "")
    table.add_row("duplicates", flag(result.duplicates, "bold red"), "")
    table.add_row("disconnects", flag(result.disconnects, "yellow"), "slow consumer or lost stream")
    table.add_row(
        "deliveries/s",
        Text(f"{result.deliveries_per_second:,.0f}", style="bold cyan"),
        f"over {result.elapsed:.2f}s, first send to last delivery",
    )
    latency = result.latency
    if latency is None:
        table.add_row("latency", "-", "nothing delivered")
    else:
        percentiles = (
            ("p50", latency.p50, "server's timestamp to subscriber"),
            ("p90", latency.p90, ""),
            ("p99", latency.p99, ""),
            ("max", latency.max, ""),
        )
        for label, millis, note in percentiles:
            table.add_row(f"latency {label}", f"{millis:,.2f} ms", note)
    cpu = result.cpu
    workers = config.worker_processes
    cpu_rows: tuple[tuple[str, float | None, str], ...] = (
        ("CPU server", cpu.server, "% of one core" if cpu.server is not None else "not measured"),
        ("CPU subscribers", cpu.workers, f"{workers} process{'es' if workers != 1 else ''}"),
        ("CPU publishers", cpu.publishers, f"this process; {_available_cpus()} cores in all"),
    )
    for label, share, note in cpu_rows:
        table.add_row(label, _percent(share), note)
    return table


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}%"


# --- publishers (in the calling process) ---------------------------------------------------------


@dataclass(slots=True)
class _Publishing:
    sent: int = 0
    errors: int = 0
    first_error: RemoteError | None = None


async def _publish(
    config: BenchConfig,
    addr: str,
    prefix: str,
    progress: ProgressCallback,
    check: Callable[[], None],
) -> _Publishing:
    """Run every publisher for `config.duration` seconds; returns what they sent. `check()` is
    called every tenth of a second and may raise to abort."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    deadline = start + config.duration
    tally = _Publishing()
    text = ("grpcchat bench " * (config.message_size // 15 + 1))[: config.message_size]
    interval = 1.0 / config.rate if config.rate else 0.0

    async def publisher(index: int) -> None:
        name = f"{prefix}{index}"
        # Spread the publishers' ticks over one interval instead of sending in bursts.
        first = start + interval * index / config.publishers
        # Sends go out on schedule without waiting for earlier answers (a unary call takes about
        # a millisecond here, longer under load), up to `max_in_flight` unanswered at a time.
        window = asyncio.Semaphore(config.max_in_flight)
        in_flight: set[asyncio.Task[None]] = set()

        async def send_one(client: ChatClient) -> None:
            try:
                await client.send(name, text, config.room)
            except RemoteError as error:
                tally.errors += 1
                if tally.first_error is None:
                    tally.first_error = error
            else:
                tally.sent += 1
            finally:
                window.release()

        async with ChatClient(ClientConfig(addr=addr, timeout=config.send_timeout)) as client:
            try:
                n = 0
                while True:
                    if interval:
                        due = first + n * interval
                        if due >= deadline:
                            break
                        delay = due - loop.time()
                        if delay > 0:
                            await asyncio.sleep(delay)
                    await window.acquire()
                    if loop.time() >= deadline:
                        window.release()
                        break
                    task = asyncio.create_task(send_one(client))
                    in_flight.add(task)
                    task.add_done_callback(in_flight.discard)
                    n += 1
                # Each send is bounded by its own deadline (send_timeout).
                await asyncio.gather(*in_flight)
            finally:
                for task in in_flight:
                    task.cancel()

    tasks = [asyncio.create_task(publisher(index)) for index in range(config.publishers)]
    try:
        while not all(task.done() for task in tasks):
            check()
            progress(PHASE_PUBLISH, min(1.0, (loop.time() - start) / config.duration))
            await asyncio.wait(tasks, timeout=0.1)
        for task in tasks:
            task.result()  # a publisher's unexpected failure
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks, timeout=_STOP_GRACE)
    return tally


# --- subscriber worker processes -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _WorkerSpec:
    index: int
    addr: str
    room: str
    names: tuple[str, ...]
    sender_prefix: str  # only messages from this run's publishers count
    timeout: float


@dataclass(frozen=True, slots=True)
class _Progress:
    worker: int
    connected: int
    delivered: int


@dataclass(frozen=True, slots=True)
class _WorkerResult:
    worker: int
    delivered: int
    duplicates: int
    disconnects: int
    last_delivery: float  # time.time() of the last new delivery, 0.0 if none
    histogram: bytes  # HdrHistogram encoding, microseconds


@dataclass(frozen=True, slots=True)
class _WorkerFailed:
    worker: int
    status: str | None  # a RemoteError's status, None for anything else
    message: str


@dataclass(frozen=True, slots=True)
class _Finish:
    """Publishing is over: wait for `expected` messages per subscriber, then report."""

    expected: int
    drain_timeout: float


@dataclass(frozen=True, slots=True)
class _Stop:
    """Leave without reporting."""


_Report = _Progress | _WorkerResult | _WorkerFailed
_Command = _Finish | _Stop


class _WorkerPool:
    """The subscriber processes, as seen from the calling process."""

    def __init__(self, specs: list[_WorkerSpec]) -> None:
        context = multiprocessing.get_context("spawn")
        self._reports: Queue[_Report] = context.Queue()
        self._commands: list[Queue[_Command]] = [context.Queue() for _ in specs]
        self._processes: list[SpawnProcess] = [
            context.Process(
                target=_worker_main,
                args=(spec, commands, self._reports),
                name=f"grpcchat-bench-{spec.index}",
                daemon=True,
            )
            for spec, commands in zip(specs, self._commands, strict=True)
        ]
        self._connected = [0] * len(specs)
        self._delivered = [0] * len(specs)
        self._results: dict[int, _WorkerResult] = {}

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._processes if p.pid is not None]

    @property
    def connected(self) -> int:
        return sum(self._connected)

    @property
    def delivered(self) -> int:
        return sum(self._delivered)

    @property
    def finished(self) -> bool:
        return len(self._results) == len(self._processes)

    @property
    def results(self) -> list[_WorkerResult]:
        return [self._results[i] for i in sorted(self._results)]

    def start(self) -> None:
        for process in self._processes:
            process.start()

    def finish(self, expected: int, drain_timeout: float) -> None:
        for commands in self._commands:
            commands.put(_Finish(expected, drain_timeout))

    def poll(self) -> None:
        """Take in every report waiting; raise if a worker failed or died."""
        exited = [p.exitcode is not None for p in self._processes]
        while True:
            try:
                report = self._reports.get_nowait()
            except queue.Empty:
                break
            if isinstance(report, _Progress):
                self._connected[report.worker] = report.connected
                self._delivered[report.worker] = report.delivered
            elif isinstance(report, _WorkerResult):
                self._results[report.worker] = report
                self._delivered[report.worker] = report.delivered
            else:
                if report.status is not None:
                    raise RemoteError(report.status, report.message)
                raise BenchError(report.message)
        for index, gone in enumerate(exited):
            if gone and index not in self._results:
                code = self._processes[index].exitcode
                raise BenchError(f"subscriber process {index} exited unexpectedly (code {code})")

    async def wait(
        self,
        done: Callable[[], bool],
        seconds: float,
        tick: Callable[[], None],
        on_timeout: Callable[[], BenchError],
    ) -> None:
        """Keep taking in reports until `done()`; raise `on_timeout()` after `seconds`."""
        deadline = time.monotonic() + seconds
        while True:
            self.poll()
            tick()
            if done():
                return
            if time.monotonic() >= deadline:
                raise on_timeout()
            await asyncio.sleep(_POLL)

    async def close(self) -> None:
        """Stop every worker: ask, then terminate, then kill. Bounded."""
        for commands in self._commands:
            with contextlib.suppress(Exception):
                commands.put_nowait(_Stop())
        await self._join(_STOP_GRACE)
        for process in self._processes:
            if process.is_alive():
                process.terminate()
        await self._join(1.0)
        for process in self._processes:
            if process.is_alive():
                process.kill()
        await self._join(1.0)
        for commands in self._commands:
            commands.close()
            commands.cancel_join_thread()
        self._reports.close()
        self._reports.cancel_join_thread()

    async def _join(self, seconds: float) -> None:
        """Wait (in a thread, bounded) until every started worker has exited."""
        deadline = time.monotonic() + seconds
        while True:
            alive = [p for p in self._processes if p.pid is not None and p.is_alive()]
            left = deadline - time.monotonic()
            if not alive or left <= 0:
                return
            await asyncio.to_thread(wait_for_any, [p.sentinel for p in alive], left)


def _worker_main(spec: _WorkerSpec, commands: Queue[_Command], reports: Queue[_Report]) -> None:
    """Entry point of a subscriber process."""
    # Ctrl-C reaches the whole process group; the parent decides when workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        asyncio.run(_Worker(spec, commands, reports).run())
    except RemoteError as error:
        reports.put(_WorkerFailed(spec.index, error.status, str(error)))
    except ChatError as error:
        reports.put(_WorkerFailed(spec.index, None, str(error)))
    except Exception as error:
        message = f"subscriber process {spec.index} failed: {type(error).__name__}: {error}"
        reports.put(_WorkerFailed(spec.index, None, message))


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

    def __init__(
        self, spec: _WorkerSpec, commands: Queue[_Command], reports: Queue[_Report]
    ) -> None:
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
            if isinstance(command, _Stop):
                return
            await self._drain(command)
            await self._leave()
            self._reports.put(self._result())
            # Stay until told to go, so the parent can still read this process's CPU time.
            await self._next_command()
        finally:
            await self._leave()

    async def _leave(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=_STOP_GRACE)
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

    def _check(self) -> None:
        """Raise what ended a session early; leave if the parent is gone."""
        for task in self._tasks:
            if task.done() and not task.cancelled() and (error := task.exception()) is not None:
                raise error
        parent = multiprocessing.parent_process()
        if parent is not None and not parent.is_alive():
            raise SystemExit(1)

    def _report(self) -> None:
        state = (
            sum(s.connected for s in self._subscribers),
            sum(s.delivered for s in self._subscribers),
        )
        if state != self._last_report:
            self._last_report = state
            self._reports.put(_Progress(self._spec.index, *state))

    async def _next_command(self) -> _Command:
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
                await asyncio.sleep(_POLL)

    async def _drain(self, finish: _Finish) -> None:
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
            total = sum(s.delivered for s in self._subscribers)
            if total != last_total:
                last_total, last_change = total, now
            if now >= deadline or now - last_change >= idle_after:
                return
            await asyncio.sleep(_POLL)

    def _result(self) -> _WorkerResult:
        histogram = HdrHistogram(_LOWEST_US, _HIGHEST_US, _SIGNIFICANT_DIGITS)
        for micros, count in self._latency_us.items():
            histogram.record_value(min(max(micros, _LOWEST_US), _HIGHEST_US), count)
        return _WorkerResult(
            worker=self._spec.index,
            delivered=sum(s.delivered for s in self._subscribers),
            duplicates=sum(s.duplicates for s in self._subscribers),
            disconnects=sum(s.disconnects for s in self._subscribers),
            last_delivery=self._last_delivery,
            histogram=bytes(histogram.encode()),
        )


def _merge_latency(encoded: list[bytes]) -> Latency | None:
    total = HdrHistogram(_LOWEST_US, _HIGHEST_US, _SIGNIFICANT_DIGITS)
    for data in encoded:
        total.add(HdrHistogram.decode(data))
    if int(total.get_total_count()) == 0:
        return None

    def ms(micros: Any) -> float:
        return int(micros) / 1000.0

    return Latency(
        p50=ms(total.get_value_at_percentile(50.0)),
        p90=ms(total.get_value_at_percentile(90.0)),
        p99=ms(total.get_value_at_percentile(99.0)),
        max=ms(total.get_max_value()),
    )


# --- the server process --------------------------------------------------------------------------


class _ServerProcess:
    """`python -m grpcchat serve FLAGS`, its address read from its startup line."""

    def __init__(self, flags: tuple[str, ...]) -> None:
        self._flags = flags
        self._process: asyncio.subprocess.Process | None = None
        self._readers: list[asyncio.Task[None]] = []
        self._stderr: deque[str] = deque(maxlen=20)
        self.addr = ""

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    async def start(self, seconds: float) -> None:
        env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "PYTHONUNBUFFERED": "1"}
        self._process = process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "grpcchat",
            "serve",
            *self._flags,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        assert process.stdout is not None
        assert process.stderr is not None
        # Keep reading stderr: a full pipe would block the server's logging, and so the server.
        self._readers.append(asyncio.create_task(self._keep(process.stderr, self._stderr)))
        try:
            line = await asyncio.wait_for(process.stdout.readline(), seconds)
        except TimeoutError:
            raise BenchError(f"the server did not start within {seconds:g}s") from None
        match = _LISTENING.search(line.decode(errors="replace"))
        if match is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(process.wait(), 2.0)
            await asyncio.sleep(0.1)  # let the stderr reader catch up
            detail = " ".join(self._stderr) or line.decode(errors="replace").strip()
            raise BenchError(f"the server did not start: {detail or 'no output'}")
        self.addr = match.group(1)
        self._readers.append(asyncio.create_task(self._keep(process.stdout, deque(maxlen=1))))

    def check(self) -> None:
        """Raise BenchError if the server process has exited."""
        if self._process is not None and self._process.returncode is not None:
            detail = " ".join(self._stderr)
            raise BenchError(
                f"the server process exited during the run (code {self._process.returncode})"
                + (f": {detail}" if detail else "")
            )

    @staticmethod
    async def _keep(stream: asyncio.StreamReader, tail: deque[str]) -> None:
        while line := await stream.readline():
            tail.append(line.decode(errors="replace").strip())

    async def stop(self) -> None:
        """SIGTERM (the server drains for at most a second), then SIGKILL. Bounded."""
        process = self._process
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
            try:
                await asyncio.wait_for(process.wait(), _STOP_GRACE + 1.0)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(process.wait(), 2.0)
        for reader in self._readers:
            reader.cancel()


# --- CPU accounting ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _CpuSnapshot:
    server: float | None
    workers: float | None
    publishers: float


def _process_cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU seconds of a process, from /proc (Linux); None elsewhere."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    # After the command name: state is field 3, utime 14 and stime 15 (1-based, see proc(5)).
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cpu_snapshot(server: _ServerProcess | None, pool: _WorkerPool) -> _CpuSnapshot:
    workers = [_process_cpu_seconds(pid) for pid in pool.pids]
    return _CpuSnapshot(
        server=_process_cpu_seconds(server.pid) if server is not None else None,
        workers=None if not workers or None in workers else sum(w or 0.0 for w in workers),
        publishers=time.process_time(),
    )


def _cpu_usage(before: _CpuSnapshot, after: _CpuSnapshot, wall: float) -> CpuUsage:
    def percent(start: float | None, end: float | None) -> float | None:
        if start is None or end is None or wall <= 0:
            return None
        return 100.0 * (end - start) / wall

    return CpuUsage(
        server=percent(before.server, after.server),
        workers=percent(before.workers, after.workers),
        publishers=percent(before.publishers, after.publishers) or 0.0,
    )
