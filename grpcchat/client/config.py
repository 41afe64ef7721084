"""Where and how a client connects: one frozen object built from flags and GRPCCHAT_* variables."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_ADDR = "localhost:4000"
DEFAULT_TIMEOUT = 10.0


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
