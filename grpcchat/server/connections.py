"""How the server treats long-lived connections: HTTP/2 keepalive (what it sends and what it
permits), the application heartbeat on session streams, and the connection age after which a
client is asked (GOAWAY) to reconnect, so streams rebalance across the nodes behind a load
balancer. The client's side of the agreement is `grpcchat.client.channel`."""

from __future__ import annotations

import math

from grpcchat.core.records import record

# Seconds a session stream (Connect, Subscribe) may carry nothing before the server writes an
# empty response: below AWS ALB's 60 s idle timeout, which ignores HTTP/2 pings.
DEFAULT_HEARTBEAT = 30.0
# Seconds after which a connection is sent GOAWAY (gRPC adds ±10% jitter); 0 = never.
DEFAULT_MAX_CONNECTION_AGE = 0.0
# Seconds its open streams then have before the connection is closed. gRPC's default is
# infinite, so a chat stream (which never ends by itself) would never move: it must be finite.
DEFAULT_MAX_CONNECTION_AGE_GRACE = 30.0


# Seconds a connection may go without calls before the server closes it (GOAWAY).
IDLE_CONNECTION = 60.0


@record
class Keepalive:
    """HTTP/2 keepalive of the server, in seconds. The defaults agree with the client's
    (`grpcchat.client.channel.KEEPALIVE_*`): it pings every 20 s, twice the least interval
    permitted here, and never without a call, as it is not permitted here either."""

    # Ping each connection this often while it has calls, and drop it when the answer takes
    # longer than `timeout`: a dead peer's sessions end within ~40 s instead of lingering
    # (and holding its name) until TCP gives up.
    time: float = 30.0
    timeout: float = 10.0
    # The least interval a client may ping at. A ping sooner than this counts a strike; past
    # `max_ping_strikes` the server sends GOAWAY ENHANCE_YOUR_CALM ("too_many_pings") and
    # closes the connection (the client's sessions reconnect and resume).
    min_ping_interval: float = 10.0
    max_ping_strikes: int = 2
    # Pings on a connection without calls are not permitted: an idle client has nothing to
    # keep alive (grpcchat's client does not send them either).
    permit_without_calls: bool = False

    def __post_init__(self) -> None:
        values = (self.time, self.timeout, self.min_ping_interval)
        if min(values) <= 0 or not all(map(math.isfinite, values)):
            raise ValueError("keepalive times must be positive and finite")
        if self.max_ping_strikes < 0:
            raise ValueError("max ping strikes must not be negative")


def connection_options(
    keepalive: Keepalive, max_age: float, max_age_grace: float
) -> list[tuple[str, int]]:
    """The grpc server options for `keepalive` and the connection age (0 = no limit)."""
    options = [
        ("grpc.keepalive_time_ms", _ms(keepalive.time)),
        ("grpc.keepalive_timeout_ms", _ms(keepalive.timeout)),
        # What grpcio 1.85 waits for a ping's answer is this (60 s by default), not the above:
        # a frozen client kept its sessions, and its name, for 90 s.
        ("grpc.http2.ping_timeout_ms", _ms(keepalive.timeout)),
        # A connection without calls is closed after a while: one address holding thousands
        # of them, idle after their HTTP/2 preface, took every file descriptor of the server.
        # A client that calls again simply connects again.
        ("grpc.max_connection_idle_ms", _ms(IDLE_CONNECTION)),
        ("grpc.http2.min_ping_interval_without_data_ms", _ms(keepalive.min_ping_interval)),
        ("grpc.http2.max_ping_strikes", keepalive.max_ping_strikes),
        ("grpc.keepalive_permit_without_calls", int(keepalive.permit_without_calls)),
        # (`grpc.http2.max_pings_without_data` is the client's business: a server's keepalive
        # pings are never limited by it.)
    ]
    if max_age > 0:
        options += [
            ("grpc.max_connection_age_ms", _ms(max_age)),
            ("grpc.max_connection_age_grace_ms", _ms(max_age_grace)),
        ]
    return options


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))
