"""What a benchmark runs (BenchConfig, validated once) and the error for a run that cannot go on."""

from __future__ import annotations

import os
from collections.abc import Sequence

from grpcchat.bench.frames import MIN_MESSAGE_SIZE
from grpcchat.client.config import parse_addrs
from grpcchat.core.errors import ConfigError, InvalidInput
from grpcchat.core.models import DEFAULT_ROOM
from grpcchat.core.records import record
from grpcchat.core.validation import MAX_TEXT_LENGTH, check_room

# Seconds a worker, a publisher or the server gets to stop before it is cancelled or killed: every
# part of a run shares it, so no part outlives an exit for long.
STOP_GRACE = 3.0

# What the load speaks. native: grpcchat's own API (subscribers on `Subscribe`, publishers on
# the `Connect` session stream or unary `Send`); v1: only the article's `Chat` stream, so it runs
# against the article's Go server as well (lobby only).
PROTOCOLS = ("native", "v1")
# How native publishers post: stream (`ConnectRequest.send`, answered by `SendAck` events),
# unary (`Send` calls), or auto: stream when the server answers acks, else unary.
PUBLISH_MODES = ("auto", "stream", "unary")
# How subscribers read: h2, each call on an HTTP/2 connection of its own read straight off the
# socket (about a microsecond of Python per delivery); grpc, gRPC's own reads on one channel per
# process (tens of microseconds each: the bench then saturates before a fast server does).
READERS = ("h2", "grpc")


class BenchError(ConfigError):
    """The benchmark could not run: the server did not start, subscribers did not connect, a
    worker process failed (a local problem, exit 1: not input the server refused)."""


def parse_pids(text: str) -> int | tuple[int, ...]:
    """`--server-pid 123` or `123,456` (one per node): a pid, or several in order; ValueError
    naming what is wrong."""
    entries = [entry.strip() for entry in text.split(",")]
    if not all(entry.isdigit() and int(entry) >= 1 for entry in entries):
        raise ValueError(
            f"--server-pid {text!r} is not a process id, or several separated by commas"
        )
    pids = tuple(int(entry) for entry in entries)
    return pids[0] if len(pids) == 1 else pids


def round_robin(count: int, addrs: Sequence[str]) -> tuple[str, ...]:
    """The address of each of `count` sessions: session i at addrs[i % len(addrs)]."""
    return tuple(addrs[i % len(addrs)] for i in range(count))


def available_cpus() -> int:
    """CPUs this process may run on: the affinity mask (a container's or taskset's limit) where
    the platform has one, else every CPU of the machine."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


@record
class BenchConfig:
    """What to run. Invalid values raise ValueError."""

    # Server to load, host:port, or several nodes of one chat as host:port,host:port (the load
    # spread round-robin over them, see `addrs`); None starts `grpcchat serve` in a process of
    # its own.
    addr: str | None = None
    # Subscribers that read everything (the ones measured and checked for loss).
    subscribers: int = 50
    publishers: int = 1
    # Messages per second per publisher; 0 sends as fast as the server takes them (each
    # publisher keeping `max_in_flight` sends unanswered).
    rate: float = 200.0
    # Seconds of publishing.
    duration: float = 10.0
    # Room of the native protocol; v1 has only the lobby (empty: "bench" native, "lobby" v1).
    room: str = ""
    protocol: str = "native"
    publish: str = "auto"
    # Extra sessions that open their stream and never read a byte: not counted as subscribers,
    # not checked for loss (the server should cut them off, or stalls), reported apart.
    slow: int = 0
    reader: str = "h2"
    # Worker processes hosting the subscribers; None: one per CPU, at most one per subscriber.
    processes: int | None = None
    # Length of each message's text, in characters (ASCII, so also bytes).
    message_size: int = 64
    # Sends each publisher may have waiting for an answer (--window): its SendAck (native), its
    # echo on the publisher's own stream (v1); 1 makes each wait for the previous.
    max_in_flight: int = 64
    # Seconds for every subscriber to connect before publishing starts.
    connect_timeout: float = 30.0
    # Seconds to wait, after the last send, for messages still on their way.
    drain_timeout: float = 10.0
    # Deadline of one send, in seconds.
    send_timeout: float = 10.0
    # Extra `grpcchat serve` flags for the server started when addr is None; they come after
    # SERVER_FLAGS, so they override them (e.g. ("--store", "sqlite:///tmp/bench.db")).
    server_args: tuple[str, ...] = ()
    # Process id of the server at `addr`, on this machine: its CPU is then measured too. Several
    # (a tuple, e.g. one per node of `addr`): each is measured, and the server's CPU is their sum.
    server_pid: int | tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.addr is not None and not self.addr.strip():
            raise ValueError("addr must be host:port, or None to start a server")
        if self.addr is not None:
            parse_addrs(self.addr)  # AddressError (a ValueError) naming the bad entry
        if self.subscribers < 1:
            raise ValueError("subscribers must be at least 1")
        if self.publishers < 1:
            raise ValueError("publishers must be at least 1")
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}")
        if self.publish not in PUBLISH_MODES:
            raise ValueError(f"publish must be one of {', '.join(PUBLISH_MODES)}")
        if self.protocol == "v1" and self.publish == "unary":
            raise ValueError("the v1 protocol posts on its Chat stream only (no unary Send)")
        if self.reader not in READERS:
            raise ValueError(f"reader must be one of {', '.join(READERS)}")
        if self.slow < 0:
            raise ValueError("slow must be 0 or more never-reading sessions")
        if self.publishers > 999:
            raise ValueError("at most 999 publishers")
        if not self.rate >= 0:  # also refuses NaN
            raise ValueError("rate must be 0 (as fast as possible) or more messages per second")
        if not 0 < self.duration < float("inf"):
            raise ValueError("duration must be a positive number of seconds")
        try:
            check_room(self.room)
        except InvalidInput as error:
            raise ValueError(str(error)) from None
        if self.protocol == "v1" and self.room not in ("", DEFAULT_ROOM):
            raise ValueError(f"the v1 protocol has only the room {DEFAULT_ROOM!r}")
        if self.processes is not None and not 1 <= self.processes <= self.subscribers:
            raise ValueError("processes must be between 1 and the number of subscribers")
        if self.max_in_flight < 1:
            raise ValueError("max in flight must be at least 1")
        if not MIN_MESSAGE_SIZE <= self.message_size <= MAX_TEXT_LENGTH:
            raise ValueError(
                f"message size must be between {MIN_MESSAGE_SIZE} (the marker each message "
                f"carries) and {MAX_TEXT_LENGTH}"
            )
        for name in ("connect_timeout", "send_timeout"):
            if not 0 < getattr(self, name) < float("inf"):
                raise ValueError(f"{name.replace('_', ' ')} must be a positive number of seconds")
        if not 0 <= self.drain_timeout < float("inf"):
            raise ValueError("drain timeout must not be negative")
        if self.server_args and self.addr is not None:
            raise ValueError("server flags only apply to a server the benchmark starts (no addr)")
        if self.server_pid is not None:
            pids = self.server_pids
            if (
                self.addr is None
                or not pids
                or not all(isinstance(pid, int) and pid >= 1 for pid in pids)
            ):
                raise ValueError("a server pid is for a server at addr, on this machine")
            if len(set(pids)) != len(pids):
                raise ValueError("a server pid is given more than once")
        if not all(isinstance(arg, str) for arg in self.server_args):
            raise ValueError("server flags must be strings")

    @property
    def target_room(self) -> str:
        """The room the load uses."""
        if self.protocol == "v1":
            return DEFAULT_ROOM
        return self.room or "bench"

    @property
    def addrs(self) -> tuple[str, ...]:
        """The addresses given, in order (empty when the bench starts its own server).
        Subscriber i, never-reading session i and publisher j go to addrs[i % n] / addrs[j % n]."""
        return () if self.addr is None else parse_addrs(self.addr)

    @property
    def server_pids(self) -> tuple[int, ...]:
        """The server pids given, in order (empty: none)."""
        if self.server_pid is None:
            return ()
        if isinstance(self.server_pid, int):
            return (self.server_pid,)
        return tuple(self.server_pid)

    @property
    def target(self) -> str:
        """What is measured: the address(es) given, as given ("a:1,b:2" normalised to no
        spaces), or "spawned grpcchat"."""
        return ",".join(self.addrs) if self.addr is not None else "spawned grpcchat"

    @property
    def worker_processes(self) -> int:
        """How many worker processes host the subscribers."""
        if self.processes is not None:
            return self.processes
        return min(self.subscribers, available_cpus())
