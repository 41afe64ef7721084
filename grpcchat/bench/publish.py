"""The publishers, in the calling process: one loop per publisher, paced to the rate (or not), and
a pluggable way to put a message on the wire.

- `ChatStream` (protocol v1): one `Chat` stream per publisher, as the article's Go client uses it.
  A stream has no answers, so there is no window: each message is `await call.write(...)`, and
  gRPC's flow control holds the publisher back when the server stops reading. It also reads
  everything the server sends back (the article's server broadcasts to the sender too, and a
  stream that never reads would stall it, or be cut off by grpcchat) and throws it away.
  A message counts as sent once its write completed.
- `SessionStream` (native, `--publish stream`): one `Connect` session per publisher posting with
  `ConnectRequest.send`; up to `window` messages written and not yet answered by their `SendAck`.
- `Unary` (native, `--publish unary`): up to `window` concurrent unary `Send` calls.

Native sends are counted once the server accepted them. A send refused with RESOURCE_EXHAUSTED
and a retry-after (pushback) is sent again after that delay with the same key, its text (and so
its send time) unchanged. A send that fails, or is still unanswered at the end, is reported as
failed: its (publisher, seq) is not expected by anyone (if it arrives anyway it is "unconfirmed").
Each message's text is stamped with the time it is handed to gRPC (after waiting for a window
slot), so a server that pushes back through flow control shows it as latency.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from grpcchat.bench import frames, h2
from grpcchat.bench.config import STOP_GRACE, BenchConfig, BenchError
from grpcchat.bench.rpc import SERVICE, Raw, StreamCall, is_data, status
from grpcchat.core.errors import RemoteError
from grpcchat.wire.codec import RETRY_AFTER_KEY

# A publisher still blocked (flow control, a full window) this long after the end of the
# duration stops: the message it was trying to send is counted as failed.
_LATE = 1.0


@dataclass(slots=True)
class Publishing:
    """What the publishers sent, all of them together."""

    mode: str = ""  # "v1 stream", "stream" or "unary"
    sent: int = 0  # sends the server accepted (v1: writes completed)
    errors: int = 0  # sends it refused, that failed or stayed unanswered
    retries: int = 0  # sends repeated after a RESOURCE_EXHAUSTED with retry-after (pushback)
    first_error: RemoteError | None = None
    issued: list[int] = field(default_factory=list)  # per publisher: seqs 0..n-1 were tried
    failed: set[tuple[int, int]] = field(default_factory=set)  # (publisher, seq) not confirmed
    started: float = 0.0  # time.time() when publishing started
    elapsed: float = 0.0  # seconds from then to the last answer (v1: the last write)

    def fail(self, publisher: int, seq: int, error: RemoteError) -> None:
        self.errors += 1
        self.failed.add((publisher, seq))
        if self.first_error is None:
            self.first_error = error


class Publisher(Protocol):
    """One publisher's way to the server."""

    async def open(self) -> None: ...

    async def submit(self, seq: int) -> None:
        """Send message `seq` (stamped now); return once the next one may be submitted."""

    async def settle(self, within: float) -> None:
        """Wait (at most `within` seconds) for answers to what was submitted; the rest failed."""

    async def aclose(self) -> None: ...


class _Base:
    def __init__(
        self, raw: Raw, config: BenchConfig, run: str, index: int, name: str, tally: Publishing
    ) -> None:
        self._window = asyncio.Semaphore(config.max_in_flight)
        self._raw = raw
        self._config = config
        self._run = run
        self._index = index
        self._name = name
        self._tally = tally
        self._room = config.target_room

    def _text(self, seq: int) -> bytes:
        return frames.message_text(self._run, self._index, seq, self._config.message_size)


async def _discard(call: StreamCall) -> None:
    """Read a stream to its end, throwing everything away."""
    with contextlib.suppress(Exception):
        while is_data(await call.read()):
            pass


async def _half_close(call: StreamCall) -> None:
    """Half-close and give the server a moment to end the call, then cancel it."""
    with contextlib.suppress(Exception):
        if not call.done():
            await asyncio.wait_for(call.done_writing(), 1.0)
            await asyncio.wait_for(call.code(), 2.0)
    call.cancel()


class ChatStream(_Base):
    """v1: the article's `Chat` stream, written in a loop and read (and discarded) meanwhile."""

    _call: StreamCall
    _reader: asyncio.Task[None]

    async def open(self) -> None:
        self._call = self._raw.chat()
        self._reader = asyncio.create_task(_discard(self._call))

    async def submit(self, seq: int) -> None:
        request = frames.chat_message(self._name, self._text(seq))
        try:
            await self._call.write(request)
        except asyncio.CancelledError:
            raise
        except Exception:
            if not self._call.done():
                raise
            error = await status(self._call, self._raw.addr)
            self._tally.fail(self._index, seq, error or RemoteError("CANCELLED", "stream ended"))
            raise _Stopped from None
        self._tally.sent += 1

    async def settle(self, within: float) -> None:
        """Nothing is answered on the article's stream: half-close it (the server then posts
        what it has not read yet and ends the call), and keep reading until aclose."""
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._call.done_writing(), min(within, 2.0))

    async def aclose(self) -> None:
        await _half_close(self._call)
        self._reader.cancel()
        await asyncio.wait([self._reader], timeout=STOP_GRACE)


class H2ChatStream(_Base):
    """v1 with `--reader h2`: the article's `Chat` stream on an HTTP/2 connection of its own,
    spoken by hand (see h2): a write waits while the server's flow-control windows are full,
    as gRPC's does, and what the server sends back is thrown away without decoding (~1 µs per
    message instead of a gRPC read, which would make the publishers what is measured)."""

    _call: h2.H2Call

    async def open(self) -> None:
        path = SERVICE + "Chat"
        try:
            self._call = await h2.open_call(self._raw.addr, path, None, lambda _data: None)
        except OSError as error:
            raise RemoteError("UNAVAILABLE", f"cannot reach {self._raw.addr} ({error})") from None

    async def submit(self, seq: int) -> None:
        try:
            await self._call.write(frames.chat_message(self._name, self._text(seq)))
        except ConnectionError as error:
            self._tally.fail(self._index, seq, RemoteError("UNAVAILABLE", str(error)))
            raise _Stopped from None
        self._tally.sent += 1

    async def settle(self, within: float) -> None:
        self._call.done_writing()

    async def aclose(self) -> None:
        with contextlib.suppress(TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(self._call.ended), 2.0)
        self._call.close()


class SessionStream(_Base):
    """native: a `Connect` session posting with `ConnectRequest.send`, acked by `SendAck`."""

    _call: StreamCall
    _tasks: list[asyncio.Task[None]]

    def __init__(
        self, raw: Raw, config: BenchConfig, run: str, index: int, name: str, tally: Publishing
    ) -> None:
        super().__init__(raw, config, run, index, name, tally)
        self._writes: asyncio.Queue[bytes] = asyncio.Queue()
        self._pending: dict[str, tuple[int, bytes]] = {}  # key -> (seq, request)
        self._idle = asyncio.Event()
        self._idle.set()

    async def open(self) -> None:
        self._call = call = self._raw.connect()
        await call.initial_metadata()
        if call.done():
            raise await status(call, self._raw.addr) or BenchError("Connect ended at once")
        await call.write(frames.hello(self._name))
        self._tasks = [
            asyncio.create_task(self._write_all()),
            asyncio.create_task(self._read_acks()),
        ]

    async def submit(self, seq: int) -> None:
        await self._window.acquire()
        self._check()
        key = str(seq)
        request = frames.send_on_session(self._text(seq), self._room, key)
        self._pending[key] = (seq, request)
        self._idle.clear()
        self._writes.put_nowait(request)  # one writer: one write may be pending per stream

    def _check(self) -> None:
        for task in self._tasks:
            if task.done():
                raise _Stopped

    async def _write_all(self) -> None:
        call = self._call
        with contextlib.suppress(Exception):
            while True:
                await call.write(await self._writes.get())

    def _answered(self, key: str) -> None:
        self._pending.pop(key, None)
        self._window.release()
        if not self._pending:
            self._idle.set()

    async def _read_acks(self) -> None:
        call = self._call
        loop = asyncio.get_running_loop()
        tally = self._tally
        try:
            while isinstance(data := await call.read(), bytes):
                for event in frames.session_events(data):
                    if isinstance(event, frames.Refused):
                        raise RemoteError(event.code, f"the server refused a send: {event.reason}")
                    entry = self._pending.get(event.key)
                    if entry is None:
                        continue
                    seq, request = entry
                    if not event.code:
                        tally.sent += 1
                        self._answered(event.key)
                    elif event.code == "RESOURCE_EXHAUSTED" and event.retry_after_ms:
                        tally.retries += 1
                        loop.call_later(
                            event.retry_after_ms / 1000, self._writes.put_nowait, request
                        )
                    else:
                        tally.fail(self._index, seq, RemoteError(event.code, event.reason))
                        self._answered(event.key)
        except asyncio.CancelledError:
            raise
        except RemoteError as refused:
            self._fail_pending(refused)
            return
        except Exception:
            if not call.done():
                raise
        ended = await status(call, self._raw.addr)
        self._fail_pending(ended or RemoteError("CANCELLED", "the session stream ended"))

    def _fail_pending(self, error: RemoteError) -> None:
        """Every unanswered send failed; their window slots are free again (a publisher
        waiting for one then sees the reader gone, and stops)."""
        for seq, _ in list(self._pending.values()):
            self._tally.fail(self._index, seq, error)
            self._window.release()
        self._pending.clear()
        self._idle.set()

    async def settle(self, within: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), within)
        self._fail_pending(RemoteError("DEADLINE_EXCEEDED", "no SendAck in time"))

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.wait(self._tasks, timeout=STOP_GRACE)
        await _half_close(self._call)


class Unary(_Base):
    """native: unary `Send` calls, up to `window` at a time."""

    def __init__(
        self, raw: Raw, config: BenchConfig, run: str, index: int, name: str, tally: Publishing
    ) -> None:
        super().__init__(raw, config, run, index, name, tally)
        self._in_flight: set[asyncio.Task[None]] = set()

    async def open(self) -> None:
        pass

    async def submit(self, seq: int) -> None:
        await self._window.acquire()
        task = asyncio.create_task(self._send(seq))
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)

    async def _send(self, seq: int) -> None:
        loop = asyncio.get_running_loop()
        timeout = self._config.send_timeout
        deadline = loop.time() + timeout
        request = frames.send_request(self._text(seq), self._room, str(seq), self._name)
        try:
            while True:
                call = self._raw.send(request, max(0.05, deadline - loop.time()))
                try:
                    await call
                except asyncio.CancelledError:
                    raise
                except Exception:
                    if not call.done():
                        raise
                error = await status(call, self._raw.addr)
                if error is None:
                    self._tally.sent += 1
                    return
                delay = _retry_after(await call.trailing_metadata())
                if error.status != "RESOURCE_EXHAUSTED" or delay is None:
                    self._tally.fail(self._index, seq, error)
                    return
                if loop.time() + delay >= deadline:
                    self._tally.fail(self._index, seq, error)
                    return
                self._tally.retries += 1
                await asyncio.sleep(delay)
        finally:
            self._window.release()

    async def settle(self, within: float) -> None:
        if self._in_flight:
            await asyncio.wait(self._in_flight, timeout=within)

    async def aclose(self) -> None:
        for task in self._in_flight:
            task.cancel()
        if self._in_flight:
            await asyncio.wait(self._in_flight, timeout=STOP_GRACE)


def _retry_after(trailing: Any) -> float | None:
    """The server's retry-after hint (seconds) in a call's trailing metadata."""
    for key, value in trailing or ():
        if key == RETRY_AFTER_KEY and isinstance(value, str) and value.isdigit():
            return int(value) / 1000
    return None


class _Stopped(Exception):
    """A publisher's stream ended: it stops (what it had sent is counted)."""


async def answers_acks(raw: Raw, name: str, room: str, within: float) -> bool:
    """Whether the server answers `ConnectRequest.send` with a SendAck: a keyless send (which
    a server that has acks refuses with one, posting nothing) on a session of its own."""
    call = raw.connect()
    try:
        async with asyncio.timeout(within):
            await call.initial_metadata()
            if call.done():
                error = await status(call, raw.addr)
                if error is not None and error.status != "UNIMPLEMENTED":
                    raise error
                return False
            await call.write(frames.hello(name))
            await call.write(frames.send_on_session(b"bench probe", room, ""))
            while isinstance(data := await call.read(), bytes):
                for event in frames.session_events(data):
                    return isinstance(event, frames.Ack)
    except TimeoutError:
        return False
    except RemoteError:
        raise
    except Exception:
        if not call.done():
            raise
    finally:
        call.cancel()
    return False


async def publish(
    config: BenchConfig,
    addr: str,
    run: str,
    names: list[str],
    mode: str,
    tick: Callable[[float], None],
    stack: contextlib.AsyncExitStack,
) -> Publishing:
    """Run every publisher (publisher i is `names[i]`) for `config.duration` seconds with `mode`
    ("v1 stream", "stream" or "unary"); returns what they sent. `tick(done)` gets the fraction of
    the duration elapsed every tenth of a second, and may raise to abort.

    The publishers' calls stay open until `stack` closes (after the drain): a v1 stream is
    half-closed at the end of the duration and goes on reading, so the server can post what it
    has not read yet (a cancelled call would throw it away)."""
    loop = asyncio.get_running_loop()
    tally = Publishing(mode=mode, issued=[0] * config.publishers)
    interval = 1.0 / config.rate if config.rate else 0.0
    # One channel: gRPC puts every publisher's streams or calls on one connection.
    raw = Raw(addr, config.send_timeout)
    stack.push_async_callback(raw.aclose)
    kinds: dict[str, type[ChatStream | H2ChatStream | SessionStream | Unary]] = {
        "v1 stream": H2ChatStream if config.reader == "h2" else ChatStream,
        "stream": SessionStream,
        "unary": Unary,
    }

    def make(index: int) -> Publisher:
        return kinds[mode](raw, config, run, index, names[index], tally)

    publishers = [make(index) for index in range(config.publishers)]

    async def close_all() -> None:
        await asyncio.gather(*(p.aclose() for p in publishers), return_exceptions=True)

    stack.push_async_callback(close_all)
    for publisher in publishers:
        await publisher.open()
    start = loop.time()
    tally.started = time.time()
    deadline = start + config.duration

    async def drive(index: int, publisher: Publisher) -> None:
        # Spread the publishers' ticks over one interval instead of sending in bursts.
        first = start + interval * index / config.publishers
        seq = 0
        while True:
            if interval:
                due = first + seq * interval
                if due >= deadline:
                    break
                delay = due - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
            now = loop.time()
            if now >= deadline:
                break
            tally.issued[index] = seq + 1
            try:
                await asyncio.wait_for(publisher.submit(seq), deadline + _LATE - now)
            except _Stopped:
                return
            except TimeoutError:
                # Blocked past the end: the message may or may not have gone out.
                stuck = RemoteError("DEADLINE_EXCEEDED", "send blocked past the end")
                tally.fail(index, seq, stuck)
                return
            seq += 1
        await publisher.settle(config.send_timeout)

    tasks = [asyncio.create_task(drive(i, p)) for i, p in enumerate(publishers)]
    try:
        while not all(task.done() for task in tasks):
            tick(min(1.0, (loop.time() - start) / config.duration))
            await asyncio.wait(tasks, timeout=0.1)
        tally.elapsed = loop.time() - start
        for task in tasks:
            task.result()  # a publisher's unexpected failure
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks, timeout=STOP_GRACE)
    return tally


class Pinger:
    """While subscribers connect (v1 only): a `Chat` stream writing a ping every `every`
    seconds, so subscribers of a server that sends no headers can tell they are registered."""

    def __init__(self, addr: str, run: str, name: str, every: float = 0.1) -> None:
        self._raw = Raw(addr, 10.0)
        self._run = run
        self._name = name
        self._every = every
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._ping())

    async def _ping(self) -> None:
        call = self._raw.chat()
        reader = asyncio.create_task(_discard(call))
        try:
            while not call.done():
                with contextlib.suppress(Exception):
                    ping = frames.ping_text(self._run, frames.MIN_MESSAGE_SIZE)
                    await call.write(frames.chat_message(self._name, ping))
                await asyncio.sleep(self._every)
        finally:
            reader.cancel()
            await _half_close(call)

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task], timeout=STOP_GRACE)
        await self._raw.aclose()
