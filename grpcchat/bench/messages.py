"""What the calling process and its subscriber processes say to each other.

Each worker gets a WorkerSpec when it is spawned and then one command queue: Finish once
publishing is over, Stop to leave. All workers share one report queue: Progress while they run,
then a WorkerResult, or a WorkerFailed instead. Everything here is pickled across processes, so it
is plain frozen data.
"""

from __future__ import annotations

from dataclasses import dataclass

POLL = 0.02  # seconds between either side's looks at its queue


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    index: int
    addr: str
    room: str
    names: tuple[str, ...]
    sender_prefix: str  # only messages from this run's publishers count
    timeout: float


@dataclass(frozen=True, slots=True)
class Progress:
    worker: int
    connected: int
    delivered: int


@dataclass(frozen=True, slots=True)
class WorkerResult:
    worker: int
    delivered: int
    duplicates: int
    disconnects: int
    last_delivery: float  # time.time() of the last new delivery, 0.0 if none
    histogram: bytes  # see latency.encode


@dataclass(frozen=True, slots=True)
class WorkerFailed:
    worker: int
    status: str | None  # a RemoteError's status, None for anything else
    message: str


@dataclass(frozen=True, slots=True)
class Finish:
    """Publishing is over: wait for `expected` messages per subscriber, then report."""

    expected: int
    drain_timeout: float


@dataclass(frozen=True, slots=True)
class Stop:
    """Leave without reporting."""


Report = Progress | WorkerResult | WorkerFailed
Command = Finish | Stop
