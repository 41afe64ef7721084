"""v1 publishers: the article's `Chat` stream, through gRPC (`ChatStream`) or straight HTTP/2
(`H2ChatStream`). A stream has no answers, so there is no window: gRPC's flow control holds the
publisher back when the server stops reading."""

from __future__ import annotations

import asyncio
import contextlib

from grpcchat.bench import frames, h2
from grpcchat.bench.config import STOP_GRACE
from grpcchat.bench.publishers import PublisherBase, Stopped, discard, half_close
from grpcchat.bench.rpc import SERVICE, StreamCall, status
from grpcchat.core.errors import RemoteError


class ChatStream(PublisherBase):
    """v1: the article's `Chat` stream, written in a loop and read (and discarded) meanwhile."""

    _call: StreamCall
    _reader: asyncio.Task[None]

    async def open(self) -> None:
        self._call = self._raw.chat()
        self._reader = asyncio.create_task(discard(self._call))

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
            raise Stopped from None
        self._tally.sent += 1

    async def settle(self, within: float) -> None:
        """Nothing is answered on the article's stream: half-close it (the server then posts
        what it has not read yet and ends the call), and keep reading until aclose."""
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
        try:
            self._call = await h2.open_call(self._raw.addr, path, None, lambda _data: None)
        except OSError as error:
            raise RemoteError("UNAVAILABLE", f"cannot reach {self._raw.addr} ({error})") from None

    async def submit(self, seq: int) -> None:
        try:
            await self._call.write(frames.chat_message(self._name, self._text(seq)))
        except ConnectionError as error:
            self._tally.fail(self._index, seq, RemoteError("UNAVAILABLE", str(error)))
            raise Stopped from None
        self._tally.sent += 1

    async def settle(self, within: float) -> None:
        self._call.done_writing()

    async def aclose(self) -> None:
        with contextlib.suppress(TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(self._call.ended), 2.0)
        self._call.close()
