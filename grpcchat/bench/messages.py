"""What the calling process and its subscriber processes say to each other.

Each worker gets a WorkerSpec when it is spawned and then one command queue: Finish once
publishing is over, Stop to leave. All workers share one report queue: Progress while they run,
then a WorkerResult, or a WorkerFailed instead. Everything here is pickled across processes, so it
is plain frozen data.
"""

from __future__ import annotations

from grpcchat.core.records import record

POLL = 0.02  # seconds between either side's looks at its queue


@record
class WorkerSpec:
    index: int
    protocol: str  # "native" (Subscribe streams) or "v1" (Chat streams)
    room: str
    names: tuple[str, ...]  # subscribers that read (counted)
    addrs: tuple[str, ...]  # the server of each subscriber (names[i] at addrs[i])
    slow_names: tuple[str, ...]  # sessions that never read (not counted)
    slow_addrs: tuple[str, ...]  # the server of each of them
    run: str  # this run's id: only messages carrying its marker count (see frames)
    reader: str  # "h2" (straight off the socket, see h2) or "grpc" (gRPC reads)
    timeout: float


@record
class Progress:
    worker: int
    connected: int
    delivered: int


@record
class WorkerResult:
    worker: int
    expected: int  # messages this worker's subscribers should have got, all together
    delivered: int  # distinct expected (subscriber, message) deliveries
    lost: int  # expected - delivered
    duplicates: int  # a subscriber got a (publisher, seq) it already had
    # Deliveries of messages whose send was not confirmed (it failed or timed out, yet the
    # message got through): neither expected nor lost.
    unconfirmed: int
    disconnects: int  # subscribers whose stream ended (cut off or lost) before the end
    slow_connected: int  # never-reading sessions that were registered
    slow_cut_off: int  # never-reading sessions the server ended
    last_delivery: float  # time.time() of the last new delivery, 0.0 if none
    histogram: bytes  # see latency.encode
    # Server address -> (subscribers, delivered, lost) of this worker's subscribers there.
    by_addr: dict[str, tuple[int, int, int]]


@record
class WorkerFailed:
    worker: int
    status: str | None  # a RemoteError's status, None for anything else
    message: str


@record
class Finish:
    """Publishing is over: publisher i tried seqs 0..issued[i]-1, of which `failed` (publisher,
    seq) pairs were not confirmed; every subscriber should have every other one. Wait for them
    (at most `drain_timeout`), then report."""

    issued: tuple[int, ...]
    failed: frozenset[tuple[int, int]]
    drain_timeout: float

    @property
    def expected(self) -> int:
        """Messages each subscriber should get."""
        return sum(self.issued) - len(self.failed)


@record
class Stop:
    """Leave without reporting."""


Report = Progress | WorkerResult | WorkerFailed
Command = Finish | Stop
