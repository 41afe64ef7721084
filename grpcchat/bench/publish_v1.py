"""v1 publishers: the article's `Chat` stream, through gRPC (`ChatStream`) or straight HTTP/2
(`H2ChatStream`). The stream has no answers, but the article's server broadcasts every message
to its sender too: a message is in flight from its write until its echo comes back, and a
publisher keeps at most `window` in flight (`Echoes`), as native publishers do with their acks.
Without that, a publisher faster than the server fills the HTTP/2 windows and socket buffers
with megabytes of messages that no subscriber can receive before the run ends."""

from __future__ import annotations

import asyncio
import contextlib

from grpcchat.bench import frames, h2
from grpcchat.bench.config import STOP_GRACE
from grpcchat.bench.publishers import PublisherBase, Stopped, half_close
from grpcchat.bench.rpc import SERVICE, StreamCall, status
from grpcchat.core.errors import RemoteError


class Echoes:
    """A publisher's own messages coming back on its stream, found by their markers' prefix
    (`<run/publisher/`), each freeing a place in the window."""

    def __init__(self, run: str, publisher: int, window: asyncio.Semaphore) -> None:
        self._prefix = f"<{run}/{publisher}/".encode()
        self._window = window
        self._tail = b""
        self.unanswered = 0
        self._all_back = asyncio.Event()
        self._all_back.set()

    async def sent(self) -> None:
        """Wait for a place in the window, then count one more message in flight."""
        await self._window.acquire()
        self.unanswered += 1
        self._all_back.clear()

    def scan(self, data: bytes) -> None:
        # A chunk may end inside a prefix: the last len(prefix) - 1 bytes are looked at again
        # with the next chunk (too few to hold a whole prefix, so nothing is counted twice).
        data = self._tail + data
        found = min(data.count(self._prefix), self.unanswered)
        self._tail = data[1 - len(self._prefix) :]
        self.unanswered -= found
        for _ in range(found):
            self._window.release()
        if not self.unanswered:
            self._all_back.set()

    async def settle(self, within: float) -> None:
        """Wait (at most `within` seconds) until every message sent has come back."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._all_back.wait(), within)

    def release_all(self) -> None:
        """The stream ended: nothing will come back, so no publisher may wait for it."""
        for _ in range(self.unanswered):
            self._window.release()
        self.unanswered = 0
        self._all_back.set()


async def _scan_all(call: StreamCall, echoes: Echoes) -> None:
    with contextlib.suppress(Exception):
        while isinstance(data := await call.read(), bytes):
            echoes.scan(data)
    echoes.release_all()


class ChatStream(PublisherBase):
    """v1: the article's `Chat` stream, written in a loop and read for its echoes meanwhile."""

    _call: StreamCall
    _reader: asyncio.Task[None]

    async def open(self) -> None:
        self._echoes = Echoes(self._run, self._index, self._window)
        self._call = self._raw.chat()
        self._reader = asyncio.create_task(_scan_all(self._call, self._echoes))

    async def submit(self, seq: int) -> None:
        await self._echoes.sent()
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
            raise Stopped from None
        self._tally.sent += 1

    async def settle(self, within: float) -> None:
        """Wait for the echoes of what was sent, then half-close (the server ends the call)
        and keep reading until aclose."""
        await self._echoes.settle(within)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._call.done_writing(), min(within, 2.0))

    async def aclose(self) -> None:
        await half_close(self._call)
        self._reader.cancel()
        await asyncio.wait([self._reader], timeout=STOP_GRACE)


class H2ChatStream(PublisherBase):
    """v1 with `--reader h2`: the article's `Chat` stream on an HTTP/2 connection of its own,
    spoken by hand (see h2): a write waits while the server's flow-control windows are full,
    as gRPC's does, and what the server sends back is thrown away without decoding (~1 µs per
    message instead of a gRPC read, which would make the publishers what is measured)."""

    _call: h2.H2Call

    async def open(self) -> None:
        path = SERVICE + "Chat"
        self._echoes = Echoes(self._run, self._index, self._window)
        try:
            self._call = await h2.open_call(self._raw.addr, path, None, self._echoes.scan)
        except OSError as error:
            raise RemoteError("UNAVAILABLE", f"cannot reach {self._raw.addr} ({error})") from None
        self._call.ended.add_done_callback(lambda _: self._echoes.release_all())

    async def submit(self, seq: int) -> None:
        await self._echoes.sent()
        try:
            await self._call.write(frames.chat_message(self._name, self._text(seq)))
        except ConnectionError as error:
            self._tally.fail(self._index, seq, RemoteError("UNAVAILABLE", str(error)))
            raise Stopped from None
        self._tally.sent += 1

    async def settle(self, within: float) -> None:
        await self._echoes.settle(within)  # over early if the call ends (see open)
        self._call.done_writing()

    async def aclose(self) -> None:
        with contextlib.suppress(TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(self._call.ended), 2.0)
        self._call.close()
