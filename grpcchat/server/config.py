"""The server's frozen, validated configuration, built once from flags and GRPCCHAT_* variables."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import platformdirs

from grpcchat.core.history import Retention
from grpcchat.core.limits import Limits
from grpcchat.server.connections import (
    DEFAULT_HEARTBEAT,
    DEFAULT_MAX_CONNECTION_AGE,
    DEFAULT_MAX_CONNECTION_AGE_GRACE,
    Keepalive,
)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 4000
DEFAULT_GRACE_PERIOD = 5.0
# Field metadata of a setting never to be shown (`grpcchat serve --check-config` masks it).
SECRET = {"secret": True}


def host_port(host: str, port: int) -> str:
    """`host:port`, with an IPv6 host in brackets."""
    bare = host.strip("[]")
    return f"[{bare}]:{port}" if ":" in bare else f"{bare}:{port}"


def default_data_dir() -> Path:
    """Where history lives unless told otherwise: the platform's per-user data directory."""
    return Path(platformdirs.user_data_dir("grpcchat", appauthor=False))


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Everything `grpcchat serve` needs; the server reads nothing else."""

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    # History engine URL: sqlite:///path (default: history.db in the data dir) or memory://.
    store: str = ""
    data_dir: str = ""
    retention: Retention = field(default_factory=Retention)
    limits: Limits = field(default_factory=Limits)
    # Authentication is on when a secret is set (HS256 tokens from `grpcchat token`).
    auth_secret: str = field(default="", metadata=SECRET)
    # TLS: certificate chain and key (PEM files); with a client CA, clients must present a
    # certificate it signed (mutual TLS).
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    # How long a draining server waits for in-flight calls before cancelling them.
    grace_period: float = DEFAULT_GRACE_PERIOD
    log_level: int = logging.INFO
    # Long-lived streams (see `connections`): seconds a session stream may stay quiet before
    # an empty response is written (0: never); seconds after which a connection is asked to
    # reconnect (GOAWAY; 0: never) and the seconds its streams then have; HTTP/2 keepalive.
    heartbeat: float = DEFAULT_HEARTBEAT
    max_connection_age: float = DEFAULT_MAX_CONNECTION_AGE
    max_connection_age_grace: float = DEFAULT_MAX_CONNECTION_AGE_GRACE
    keepalive: Keepalive = field(default_factory=Keepalive)
    # Prometheus metrics at http://host:metrics_port/metrics (same interface as gRPC); 0: off.
    metrics_port: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be between 0 and 65535, not {self.port}")
        if not 0 <= self.metrics_port <= 65535:
            raise ValueError(
                f"metrics port must be between 0 (off) and 65535, not {self.metrics_port}"
            )
        if self.grace_period < 0:
            raise ValueError("grace period must not be negative")
        for what, seconds in (
            ("heartbeat", self.heartbeat),
            ("max connection age", self.max_connection_age),
            ("max connection age grace", self.max_connection_age_grace),
        ):
            if not 0 <= seconds < math.inf:
                raise ValueError(f"{what} must be 0 or more seconds (and finite), not {seconds}")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("TLS needs both --tls-cert and --tls-key")
        if self.tls_client_ca and not self.tls_cert:
            raise ValueError("--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key")

    @property
    def store_url(self) -> str:
        if self.store:
            return self.store
        data_dir = Path(self.data_dir) if self.data_dir else default_data_dir()
        return f"sqlite://{data_dir / 'history.db'}"

    @property
    def bind_address(self) -> str:
        return host_port(self.host, self.port)
