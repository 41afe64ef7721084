"""What a benchmark measured: the public result types, plain data that `asdict` turns into JSON."""

from __future__ import annotations

from dataclasses import dataclass

from grpcchat.bench.config import BenchConfig


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
    """One run's counts, rates, latency and CPU, with the config that produced them."""

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
