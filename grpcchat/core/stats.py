"""What the chat has done so far, as plain numbers the hot path bumps for next to nothing.

The hub and the server's writers only add to ints (`stats.accepted += 1`) and to fixed-bucket
histograms (a bisect and two additions); nothing here knows how the numbers are exported. The
server's metrics endpoint (`grpcchat.server.metrics`) reads them when it is scraped, from its own
thread: an int read is atomic, and a histogram is read by copying its counts first.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, field

from grpcchat.core.models import Message, RelationKind
from grpcchat.core.records import record

# Seconds: from a fast in-memory path (tens of microseconds) to a client seconds behind.
LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


# The label values of the relations counter, shown at 0 before the first of each.
RELATION_KINDS = tuple(kind.value for kind in RelationKind)


class Histogram:
    """Counts of observations per bucket (upper bounds, inclusive; the last count is above every
    bound), and their sum."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def snapshot(self) -> tuple[list[int], float]:
        """The counts (a copy) and the sum, consistent enough to read from another thread."""
        return list(self.counts), self.total


@dataclass(slots=True)
class HubStats:
    """Counters of the hub, since it started."""

    # Room and direct messages stored (or sent) and delivered; a repeated key is not counted.
    # Replies count here; edits, deletes and reactions (entries of the log too, but no new
    # chat line) count in `relations`, by kind.
    accepted: int = 0
    relations: dict[str, int] = field(default_factory=lambda: dict.fromkeys(RELATION_KINDS, 0))
    # Refusals over the per-user message rate, and over the joins/leaves/reads rate.
    rate_limited_messages: int = 0
    rate_limited_requests: int = 0
    # Sessions cut off as slow consumers (queue overflow, or a writer stuck while lagging).
    slow_consumers: int = 0
    # Joins that asked to resume from a position, and HistoryGap events queued for clients.
    resumes: int = 0
    gaps: int = 0
    # Seconds the store took to append a room message (batched commits included).
    store_append: Histogram = field(default_factory=Histogram)

    def accepted_entry(self, message: Message) -> None:
        """Count a message (or relation) the hub accepted, not a repeated key's original."""
        if message.relation is None:
            self.accepted += 1
        else:
            kind = message.relation.kind.value
            self.relations[kind] = self.relations.get(kind, 0) + 1


@record
class Load:
    """The hub's state at one moment (see `Hub.load`)."""

    sessions: int
    rooms: int
    # Sessions in rooms, summed over rooms (a session in three rooms counts three times).
    memberships: int
    # Live events waiting in sessions' queues: in all of them, and in the fullest one.
    queued: int
    max_queued: int
    # Sessions whose queue is more than half full.
    lagging: int
