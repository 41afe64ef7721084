"""What one client may use, in one frozen object the hub and its sessions read."""

from __future__ import annotations

import math

from grpcchat.core.records import record

DEFAULT_QUEUE_SIZE = 1024
DEFAULT_RATE = 20.0
DEFAULT_REQUEST_RATE = 50.0
DEFAULT_MAX_SESSIONS = 20_000
DEFAULT_MAX_SESSIONS_PER_PEER = 2_000
DEFAULT_MAX_ANONYMOUS_SESSIONS = 10_000
# The largest count a limit takes: far past what one process holds, and small enough for every
# engine and gRPC's own counters (a C int, with headroom) to store it.
MAX_COUNT = 1_000_000_000


@record
class Limits:
    """What one client may use. Zero disables a limit."""

    # Live events a session may lag behind before it is disconnected as a slow consumer.
    queue_size: int = DEFAULT_QUEUE_SIZE
    # A busy session's writer waits this long so one response carries many events: each write
    # costs tens of microseconds of event-loop time, so batching is what lets a room scale.
    # Measured on 2 cores, 50 subscribers: 3 ms gave 12k deliveries/s, 10 ms gives ~20k.
    batch_linger: float = 0.010
    # ... except when it holds an answer to the client's own request (a SendAck): a client
    # keeping a window of sends in flight waits on those to send more, so its rate is the window
    # over this wait. Measured (bench (a), 64 in flight): 10 ms gave 435k deliveries/s, with the
    # server's CPU to spare; 1, 2 and 5 ms 566k-582k, CPU-bound again.
    answer_linger: float = 0.0025
    max_batch: int = 512
    max_rooms_per_session: int = 32
    max_sessions_per_user: int = 16
    # Sessions (streams) in total, and per client address.
    max_sessions: int = DEFAULT_MAX_SESSIONS
    max_sessions_per_peer: int = DEFAULT_MAX_SESSIONS_PER_PEER
    # Anonymous streams (the article's Chat without auth, nameless Subscribe): nothing else
    # bounds them per user, so they have a cap of their own.
    max_anonymous_sessions: int = DEFAULT_MAX_ANONYMOUS_SESSIONS
    # Messages per second per user (or, without auth, per address), with bursts up to `burst`.
    rate: float = DEFAULT_RATE
    burst: float = DEFAULT_RATE * 3
    # Joins, leaves and reads (History, ListRooms, ListMembers) per second per user or address.
    request_rate: float = DEFAULT_REQUEST_RATE
    request_burst: float = DEFAULT_REQUEST_RATE * 5
    # Most messages replayed on resume (retention bounds it anyway).
    max_replay: int = 10_000

    def __post_init__(self) -> None:
        if self.queue_size < 1 or self.max_batch < 1:
            raise ValueError("queue size and max batch must be at least 1")
        lingers = (self.batch_linger, self.answer_linger)
        rates = (self.rate, self.burst, self.request_rate, self.request_burst)
        if min(*lingers, *rates) < 0:
            raise ValueError("lingers, rates and bursts must not be negative")
        if not all(math.isfinite(value) for value in (*lingers, *rates)):
            raise ValueError("lingers, rates and bursts must be finite (a rate of 0: no limit)")
        counts = {
            "queue size": self.queue_size,
            "max batch": self.max_batch,
            "max rooms per session": self.max_rooms_per_session,
            "max sessions per user": self.max_sessions_per_user,
            "max sessions": self.max_sessions,
            "max sessions per peer": self.max_sessions_per_peer,
            "max anonymous sessions": self.max_anonymous_sessions,
            "max replay": self.max_replay,
        }
        if min(counts.values()) < 0:
            raise ValueError("limits must not be negative")
        for name, count in counts.items():
            if count > MAX_COUNT:
                raise ValueError(f"{name} must be at most {MAX_COUNT:,}, not {count:,}")
