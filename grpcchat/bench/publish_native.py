"""Native publishers: a `Connect` session posting with `ConnectRequest.send` (or `sends`: what
waits together, packed in one request) and a window of unanswered sends (`SessionStream`), or
concurrent unary `Send` calls (`Unary`); and the probe that tells whether a server answers
`SendAck` at all."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from grpcchat.bench import frames
from grpcchat.bench.config import STOP_GRACE, BenchConfig, BenchError
from grpcchat.bench.publishers import PublisherBase, Publishing, Stopped, half_close
from grpcchat.bench.rpc import Raw, StreamCall, status
from grpcchat.core.errors import RemoteError
from grpcchat.wire.codec import PACKED_SENDS_BYTES, RETRY_AFTER_KEY, reads_packed_sends


class SessionStream(PublisherBase):
    """native: a `Connect` session posting with `ConnectRequest.send`, acked by `SendAck`."""

    _call: StreamCall
    _tasks: list[asyncio.Task[None]]
    _packs: bool  # the server reads ConnectRequest.sends (older ones do not)

    def __init__(
        self, raw: Raw, config: BenchConfig, run: str, index: int, name: str, tally: Publishing
    ) -> None:
        super().__init__(raw, config, run, index, name, tally)
        self._writes: asyncio.Queue[bytes] = asyncio.Queue()  # SendRequests
        self._pending: dict[str, tuple[int, bytes]] = {}  # key -> (seq, SendRequest)
        self._idle = asyncio.Event()
        self._idle.set()

    async def open(self) -> None:
        self._call = call = self._raw.connect()
        self._packs = reads_packed_sends(await call.initial_metadata())
        if call.done():
            raise await status(call, self._raw.addr) or BenchError("Connect ended at once")
        await call.write(frames.hello(self._name))
        self._tasks = [
            asyncio.create_task(self._write_all()),
            asyncio.create_task(self._read_acks()),
        ]

    async def submit(self, seq: int) -> None:
        await self._window.acquire()
        if any(task.done() for task in self._tasks):
            # Counted as tried (the caller issued it): failed, not expected of subscribers.
            self._tally.fail(self._index, seq, RemoteError("UNAVAILABLE", "the stream ended"))
            raise Stopped
        key = str(seq)
        request = frames.send_request(self._text(seq), self._room, key)
        self._pending[key] = (seq, request)
        self._idle.clear()
        self._writes.put_nowait(request)  # one writer: one write may be pending per stream

    async def _write_all(self) -> None:
        call = self._call
        with contextlib.suppress(Exception):
            while True:
                # Sends waiting together go out as one request, as the client library's do.
                batch = [await self._writes.get()]
                size = len(batch[0])
                while self._packs and size < PACKED_SENDS_BYTES and not self._writes.empty():
                    batch.append(self._writes.get_nowait())
                    size += len(batch[-1])
                await call.write(frames.wrap_sends(batch))

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
        await half_close(self._call)


class Unary(PublisherBase):
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
                delay = retry_after(await call.trailing_metadata())
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


def retry_after(trailing: Any) -> float | None:
    """The server's retry-after hint (seconds) in a call's trailing metadata."""
    for key, value in trailing or ():
        if key == RETRY_AFTER_KEY and isinstance(value, str) and value.isdigit():
            return int(value) / 1000
    return None


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
