"""Frozen, validated configuration, built once from flags and GRPCCHAT_* variables."""

from __future__ import annotations

import logging
from dataclasses import dataclass

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 4000
DEFAULT_ADDR = f"localhost:{DEFAULT_PORT}"
DEFAULT_QUEUE_SIZE = 1024
DEFAULT_GRACE_PERIOD = 5.0
DEFAULT_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Everything `grpcchat serve` needs; the server reads nothing else."""

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    # Messages a subscriber may lag behind before it is disconnected as a slow consumer.
    queue_size: int = DEFAULT_QUEUE_SIZE
    # Under load a subscriber's writer waits this long so one response carries many messages.
    batch_linger: float = 0.003
    max_batch: int = 512
    # How long a draining server waits for in-flight calls before cancelling them.
    grace_period: float = DEFAULT_GRACE_PERIOD
    log_level: int = logging.INFO

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be between 0 and 65535, not {self.port}")
        if self.queue_size < 1:
            raise ValueError("queue size must be at least 1")
        if self.max_batch < 1:
            raise ValueError("max batch must be at least 1")
        if self.batch_linger < 0 or self.grace_period < 0:
            raise ValueError("linger and grace period must not be negative")

    @property
    def bind_address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host and not self.host.startswith("[") else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """Where and how a client connects."""

    addr: str = DEFAULT_ADDR
    # Deadline for one unary call (send) including retries, in seconds.
    timeout: float = DEFAULT_TIMEOUT
