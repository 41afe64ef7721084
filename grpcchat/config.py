"""Frozen, validated configuration, built once from flags and GRPCCHAT_* variables."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import platformdirs

from grpcchat.errors import ConfigError
from grpcchat.store.base import Retention

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 4000
DEFAULT_ADDR = f"localhost:{DEFAULT_PORT}"
DEFAULT_QUEUE_SIZE = 1024
DEFAULT_GRACE_PERIOD = 5.0
DEFAULT_TIMEOUT = 10.0
DEFAULT_RATE = 20.0


def host_port(host: str, port: int) -> str:
    """`host:port`, with an IPv6 host in brackets."""
    bare = host.strip("[]")
    return f"[{bare}]:{port}" if ":" in bare else f"{bare}:{port}"


def read_pem(path: str, what: str) -> bytes:
    """The bytes of a certificate or key file, or a ConfigError naming it."""
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise ConfigError(f"cannot read the {what} {path}: {error.strerror}") from None


def default_data_dir() -> Path:
    """Where history lives unless told otherwise: the platform's per-user data directory."""
    return Path(platformdirs.user_data_dir("grpcchat", appauthor=False))


@dataclass(frozen=True, slots=True)
class Limits:
    """What one client may use. Zero disables a limit."""

    # Live events a session may lag behind before it is disconnected as a slow consumer.
    queue_size: int = DEFAULT_QUEUE_SIZE
    # A busy session's writer waits this long so one response carries many events: each write
    # costs tens of microseconds of event-loop time, so batching is what lets a room scale.
    # Measured on 2 cores, 50 subscribers: 3 ms gave 12k deliveries/s, 10 ms gives ~20k.
    batch_linger: float = 0.010
    max_batch: int = 512
    max_rooms_per_session: int = 32
    max_sessions_per_user: int = 16
    # Messages per second per user, with bursts up to `burst`.
    rate: float = DEFAULT_RATE
    burst: float = DEFAULT_RATE * 3
    # Most messages replayed on resume (retention bounds it anyway).
    max_replay: int = 10_000

    def __post_init__(self) -> None:
        if self.queue_size < 1 or self.max_batch < 1:
            raise ValueError("queue size and max batch must be at least 1")
        if min(self.batch_linger, self.rate, self.burst) < 0:
            raise ValueError("linger, rate and burst must not be negative")
        if min(self.max_rooms_per_session, self.max_sessions_per_user, self.max_replay) < 0:
            raise ValueError("limits must not be negative")


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Everything `grpcchat serve` needs; the server reads nothing else."""

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    # History engine URL: sqlite:///path (default: history.db in the data dir) or memory://.
    store: str = ""
    data_dir: str = ""
    retention: Retention = field(default_factory=Retention)
    limits: Limits = Limits()
    # Authentication is on when a secret is set (HS256 tokens from `grpcchat token`).
    auth_secret: str = ""
    # TLS: certificate chain and key (PEM files); with a client CA, clients must present a
    # certificate it signed (mutual TLS).
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    # How long a draining server waits for in-flight calls before cancelling them.
    grace_period: float = DEFAULT_GRACE_PERIOD
    log_level: int = logging.INFO

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be between 0 and 65535, not {self.port}")
        if self.grace_period < 0:
            raise ValueError("grace period must not be negative")
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


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """Where and how a client connects."""

    addr: str = DEFAULT_ADDR
    # Deadline for one unary call (send) including retries, in seconds.
    timeout: float = DEFAULT_TIMEOUT
    # Bearer token for a server with authentication on.
    token: str = ""
    # TLS: `tls` alone trusts the system's roots; `tls_ca` trusts that CA file instead.
    # `tls_cert`/`tls_key` present a client certificate (mutual TLS).
    tls: bool = False
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""

    def __post_init__(self) -> None:
        if self.timeout <= 0:
            raise ValueError("timeout must be positive")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("a client certificate needs both --tls-cert and --tls-key")

    @property
    def uses_tls(self) -> bool:
        return self.tls or bool(self.tls_ca or self.tls_cert)
