"""What every publisher shares: the tally of what was sent, the `Publisher` interface the
publishing loop drives, and the base that stamps each message's text (see `publish`)."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Protocol

from grpcchat.bench import frames
from grpcchat.bench.config import BenchConfig
from grpcchat.bench.rpc import Raw, StreamCall, is_data
from grpcchat.core.errors import RemoteError


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


class PublisherBase:
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


class Stopped(Exception):
    """A publisher's stream ended: it stops (what it had sent is counted)."""


async def discard(call: StreamCall) -> None:
    """Read a stream to its end, throwing everything away."""
    with contextlib.suppress(Exception):
        while is_data(await call.read()):
            pass


async def half_close(call: StreamCall) -> None:
    """Half-close and give the server a moment to end the call, then cancel it."""
    with contextlib.suppress(Exception):
        if not call.done():
            await asyncio.wait_for(call.done_writing(), 1.0)
            await asyncio.wait_for(call.code(), 2.0)
    call.cancel()
