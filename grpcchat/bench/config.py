"""What a benchmark runs (BenchConfig, validated once) and the error for a run that cannot go on."""

from __future__ import annotations

import os
from dataclasses import dataclass

from grpcchat.core.errors import ChatError, InvalidInput
from grpcchat.core.validation import MAX_TEXT_LENGTH, check_room

# Seconds a worker, a publisher or the server gets to stop before it is cancelled or killed: every
# part of a run shares it, so no part outlives an exit for long.
STOP_GRACE = 3.0


class BenchError(ChatError):
    """The benchmark could not run: the server did not start, subscribers did not connect, a
    worker process failed."""


def available_cpus() -> int:
    """CPUs this process may run on: the affinity mask (a container's or taskset's limit) where
    the platform has one, else every CPU of the machine."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


@dataclass(frozen=True, slots=True)
class BenchConfig:
    """What to run. Invalid values raise ValueError."""

    # Server to load, host:port; None starts `grpcchat serve` in a process of its own.
    addr: str | None = None
    subscribers: int = 50
    publishers: int = 1
    # Messages per second per publisher; 0 sends as fast as the server answers (each publisher
    # keeping `max_in_flight` sends outstanding).
    rate: float = 200.0
    # Seconds of publishing.
    duration: float = 10.0
    room: str = "bench"
    # Worker processes hosting the subscribers; None: one per CPU, at most one per subscriber.
    processes: int | None = None
    # Length of each message's text, in characters (ASCII, so also bytes).
    message_size: int = 64
    # Sends each publisher may have waiting for an answer; 1 makes each wait for the previous.
    max_in_flight: int = 16
    # Seconds for every subscriber to connect before publishing starts.
    connect_timeout: float = 30.0
    # Seconds to wait, after the last send, for messages still on their way.
    drain_timeout: float = 10.0
    # Deadline of one send, in seconds.
    send_timeout: float = 10.0
    # Extra `grpcchat serve` flags for the server started when addr is None; they come after
    # SERVER_FLAGS, so they override them (e.g. ("--store", "sqlite:///tmp/bench.db")).
    server_args: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.addr is not None and not self.addr.strip():
            raise ValueError("addr must be host:port, or None to start a server")
        if self.subscribers < 1:
            raise ValueError("subscribers must be at least 1")
        if self.publishers < 1:
            raise ValueError("publishers must be at least 1")
        if not self.rate >= 0:  # also refuses NaN
            raise ValueError("rate must be 0 (as fast as possible) or more messages per second")
        if not 0 < self.duration < float("inf"):
            raise ValueError("duration must be a positive number of seconds")
        try:
            check_room(self.room)
        except InvalidInput as error:
            raise ValueError(str(error)) from None
        if self.processes is not None and not 1 <= self.processes <= self.subscribers:
            raise ValueError("processes must be between 1 and the number of subscribers")
        if self.max_in_flight < 1:
            raise ValueError("max in flight must be at least 1")
        if not 1 <= self.message_size <= MAX_TEXT_LENGTH:
            raise ValueError(f"message size must be between 1 and {MAX_TEXT_LENGTH}")
        for name in ("connect_timeout", "send_timeout"):
            if not 0 < getattr(self, name) < float("inf"):
                raise ValueError(f"{name.replace('_', ' ')} must be a positive number of seconds")
        if not 0 <= self.drain_timeout < float("inf"):
            raise ValueError("drain timeout must not be negative")
        if self.server_args and self.addr is not None:
            raise ValueError("server flags only apply to a server the benchmark starts (no addr)")
        if not all(isinstance(arg, str) for arg in self.server_args):
            raise ValueError("server flags must be strings")

    @property
    def worker_processes(self) -> int:
        """How many worker processes host the subscribers."""
        if self.processes is not None:
            return self.processes
        return min(self.subscribers, available_cpus())
