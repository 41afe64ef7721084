"""The server's frozen, validated configuration, built once from flags and GRPCCHAT_* variables."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import platformdirs

from grpcchat.core.history import Retention
from grpcchat.core.limits import Limits

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 4000
DEFAULT_GRACE_PERIOD = 5.0


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
