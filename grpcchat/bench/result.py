"""What a benchmark measured: the public result types, plain data that `asdict` turns into JSON."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from grpcchat.bench.config import BenchConfig
from grpcchat.core.records import record


@record
class Latency:
    """End-to-end latency percentiles, in milliseconds."""

    p50: float
    p90: float
    p99: float
    max: float


@record
class CpuUsage:
    """CPU used while publishing and draining, in percent of one core (200.0 = two cores busy).
    None where it cannot be measured (not Linux, or a server this run did not start)."""

    server: float | None  # every server pid together (None unless each could be read)
    workers: float | None  # all subscriber processes together
    publishers: float  # the calling process
    # Each server pid's share, in the order given (`BenchConfig.server_pids`; the spawned
    # server's alone when the bench started it); empty when no server was measured.
    servers: tuple[float | None, ...] = ()


@record
class NodeShare:
    """The part of the load at one server address (one node of the chat)."""

    addr: str
    subscribers: int  # subscribers following the room there
    publishers: int  # publishers posting there
    accepted: int  # messages its publishers had accepted (every subscriber expects them)
    delivered: int  # distinct expected deliveries to its subscribers, whichever node sent them
    lost: int  # expected deliveries its subscribers did not get


@record
class BenchResult:
    """One run's counts, rates, latency and CPU, with the config that produced them."""

    config: BenchConfig
    # The server that was measured: host:port, or several nodes' "a:1,b:2" (see `nodes`).
    addr: str
    # How publishers posted: "v1 stream" (Chat), "stream" (Connect + SendAck) or "unary" (Send).
    publish_mode: str
    sent: int  # messages the server accepted (v1: writes completed)
    send_errors: int  # sends that failed or stayed unanswered (not counted in `sent`)
    send_retries: int  # sends repeated after a pushback (RESOURCE_EXHAUSTED, retry-after)
    expected: int  # sent x subscribers (the never-reading sessions excluded)
    delivered: int  # distinct (subscriber, message) deliveries of what was expected
    lost: int  # expected - delivered
    duplicates: int  # a subscriber got a (publisher, seq) it already had
    # Deliveries of messages whose send failed or was not answered in time: they got through
    # anyway (not lost, not expected).
    unconfirmed: int
    # Subscribers whose stream ended before the end (cut off or lost); they are not reconnected.
    disconnects: int
    slow_connected: int  # never-reading sessions registered before publishing
    slow_cut_off: int  # never-reading sessions the server ended during the run
    publish_elapsed: float  # seconds from the first send to the last one's answer
    elapsed: float  # seconds from the first send to the last delivery (at least publish_elapsed)
    sent_per_second: float
    deliveries_per_second: float  # delivered / elapsed
    latency: Latency | None  # None when nothing was delivered
    cpu: CpuUsage
    # The load at each address, in the order given (one entry for a single server).
    nodes: tuple[NodeShare, ...] = ()

    @property
    def addrs(self) -> tuple[str, ...]:
        """Every address measured, in order."""
        return tuple(node.addr for node in self.nodes) or (self.addr,)

    @property
    def ok(self) -> bool:
        """Everything sent reached every subscriber exactly once."""
        return self.lost == 0 and self.duplicates == 0 and self.send_errors == 0

    def as_json(self) -> dict[str, Any]:
        """Every field (config included), plus the summary keys scripts read: `protocol`,
        `target`, `addrs` (every address measured, a list), `subscribers`, `slow`,
        `deliveries_per_s`, `latency_ms` and `ok`."""
        data = asdict(self)
        config = self.config
        latency = self.latency
        data.update(
            protocol=config.protocol,
            target=config.target,
            addrs=list(self.addrs),
            subscribers=config.subscribers,
            publishers=config.publishers,
            slow=config.slow,
            window=config.max_in_flight,
            rate=config.rate,
            message_size=config.message_size,
            deliveries_per_s=self.deliveries_per_second,
            latency_ms=None if latency is None else asdict(latency),
            ok=self.ok,
        )
        return data
