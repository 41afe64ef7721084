"""Opening a channel as the client config says: plaintext or TLS (optionally mutual), and the
bearer token as call metadata — never sent in the clear beyond this machine. A `Connection`
is that channel with its stub, shared by a client and its sessions.

Several addresses (`--addr a:1,b:2`) are the client's own choice, not gRPC's load balancing:
one channel per address (so TLS checks each server under its own name), the one in use
chosen here, moving on to the next (round-robin) when the one in use cannot be reached —
deterministic, and every error names the address it is about."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import TypeVar

import grpc
from grpc import aio

from grpcchat.client.config import ClientConfig, host_and_port
from grpcchat.client.errors import NOT_CONNECTED, ClientClosed, remote_error, retry_after
from grpcchat.core.errors import ConfigError, RemoteError
from grpcchat.gen.chat.v1 import chat_service_pb2_grpc as pb_grpc

# Keepalive, agreeing with what the server permits (`grpcchat.server.connections.Keepalive`):
# it allows a ping every 10 s at most and none on a connection without calls; a client that
# pings more often is sent GOAWAY too_many_pings. Pinging every 20 s (twice the permitted
# interval, so timer jitter never makes a ping "too soon") finds a dead server or a silently
# dropped NAT mapping within ~30 s instead of TCP's minutes.
KEEPALIVE_TIME_MS = 20_000
KEEPALIVE_TIMEOUT_MS = 10_000
# No pings without a call: the server counts them as abuse, and an idle client has nothing
# to keep alive.
KEEPALIVE_PERMIT_WITHOUT_CALLS = 0
# gRPC stops pinging after two pings without sending data; a session stream that only reads
# (Subscribe, or Connect between sends) would then lose dead-server detection. 0: no limit.
MAX_PINGS_WITHOUT_DATA = 0

_CHANNEL_OPTIONS = [
    # gRPC's own reconnect backoff grows to two minutes; a chat client wants the server back
    # within seconds of it returning.
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 5000),
    ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
    ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    ("grpc.keepalive_permit_without_calls", KEEPALIVE_PERMIT_WITHOUT_CALLS),
    ("grpc.http2.max_pings_without_data", MAX_PINGS_WITHOUT_DATA),
]

Metadata = tuple[tuple[str, str], ...]


class InsecureTokenError(ConfigError):
    """A token would travel in plaintext to another machine."""


def _host(addr: str) -> str:
    where = host_and_port(addr)
    return where[0] if where is not None else addr


def is_loopback(addr: str) -> bool:
    """Whether `addr` is this machine: a loopback host, or a Unix socket (never on a wire)."""
    if addr.startswith(("unix:", "unix-abstract:")):
        return True
    host = _host(addr)
    if host == "localhost":
        return True
    import ipaddress

    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _metadata(config: ClientConfig) -> Metadata:
    return (("authorization", f"Bearer {config.token}"),) if config.token else ()


def _check_token_safe(config: ClientConfig, addr: str) -> None:
    if not config.uses_tls and config.token and not is_loopback(addr):
        raise InsecureTokenError(
            f"refusing to send a token in plaintext to {addr}; "
            "use --tls (system roots) or --tls-ca FILE"
        )


def open_channel(config: ClientConfig, addr: str | None = None) -> tuple[aio.Channel, Metadata]:
    """The channel to `addr` (default: the config's first address) and the metadata every
    call must carry."""
    addr = addr if addr is not None else config.addrs[0]
    metadata = _metadata(config)
    _check_token_safe(config, addr)
    if not config.uses_tls:
        return aio.insecure_channel(addr, options=_CHANNEL_OPTIONS), metadata

    from grpcchat.core.files import check_client_tls_files, read_pem

    def optional(path: str, what: str) -> bytes | None:
        return read_pem(path, what) if path else None

    root_certificates = optional(config.tls_ca, "CA file")
    private_key = optional(config.tls_key, "client key")
    certificate_chain = optional(config.tls_cert, "client certificate")
    check_client_tls_files(config.tls_cert, config.tls_key, config.tls_ca)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=root_certificates,
        private_key=private_key,
        certificate_chain=certificate_chain,
    )
    return aio.secure_channel(addr, credentials, options=_CHANNEL_OPTIONS), metadata


_T = TypeVar("_T")
RESOURCE_EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED


def fails_over(error: grpc.RpcError) -> bool:
    """Whether a failed call is worth trying at the next address: the server could not be
    reached or is going away (UNAVAILABLE), or gave no answer in its share of the time, be it
    not connected or connected and silent (every call made this way only reads, or moves a
    read marker forward: made twice, it does no harm)."""
    return error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


class Connection:
    """The channel to the server in use: the stub every call goes through and the metadata
    every call carries. `error()` explains a failed call with what the channel knows.

    With several addresses, `channel`/`stub`/`addr` are those of the one in use and
    `next_address()` moves on; channels are opened on first use and kept until `aclose()`,
    so a call still running on the previous one is not cut off."""

    def __init__(self, config: ClientConfig) -> None:
        self.config = config
        self.addrs = config.addrs
        for addr in self.addrs:  # refuse before anything is sent anywhere
            _check_token_safe(config, addr)
        self.metadata = _metadata(config)
        self._channels: dict[str, tuple[aio.Channel, pb_grpc.ChatServiceAsyncStub]] = {}
        self._index = 0
        self.closed = False
        self.channel, self._stub = self._open(self.addrs[0])
        # Learned on the first UNIMPLEMENTED: the peer is the article's server.
        self.legacy_server = False

    @property
    def addr(self) -> str:
        """The address in use."""
        return self.addrs[self._index]

    @property
    def several(self) -> bool:
        return len(self.addrs) > 1

    @property
    def stub(self) -> pb_grpc.ChatServiceAsyncStub:
        """The stub every call goes through; once the client is closed, a call is a clear
        error (gRPC's own is a UsageError, no ChatError)."""
        if self.closed:
            raise ClientClosed("this ChatClient was closed: open another")
        return self._stub

    @contextlib.contextmanager
    def closed_under(self, what: str) -> Iterator[None]:
        """A call whose channel `aclose()` closed under it fails with ClientClosed: gRPC
        cancels the call, and its CancelledError must not make the caller's task look
        cancelled (nobody cancelled it; a TaskGroup would take it for a cancellation)."""
        try:
            yield
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if self.closed and task is not None and not task.cancelling():
                raise ClientClosed(f"the ChatClient was closed under {what}") from None
            raise

    def _open(self, addr: str) -> tuple[aio.Channel, pb_grpc.ChatServiceAsyncStub]:
        if addr not in self._channels:
            channel, _ = open_channel(self.config, addr)
            self._channels[addr] = (channel, pb_grpc.ChatServiceStub(channel))
        return self._channels[addr]

    def next_address(self) -> str:
        """Move on to the next address (round-robin) and return it; one address: itself."""
        self._index = (self._index + 1) % len(self.addrs)
        self.channel, self._stub = self._open(self.addr)
        return self.addr

    @property
    def connected(self) -> bool:
        """Whether the channel in use has (or just had) a connection to its server."""
        return self.channel.get_state(try_to_connect=False) not in NOT_CONNECTED

    def error(self, error: grpc.RpcError, tried: Sequence[str] = ()) -> RemoteError:
        """`error` as a RemoteError; call it as soon as the call fails, so the channel's
        state is the one the call failed in. `tried`: every address the call was tried at,
        when more than the one in use (the message names them all)."""
        state = self.channel.get_state(try_to_connect=False)
        where = tried if len(tried) > 1 else (self.addr,)
        return remote_error(error, where, state=state, tls=self.config.uses_tls)

    async def unary(self, invoke: Callable[[float], Awaitable[_T]], timeout: float) -> _T:  # noqa: ASYNC109
        """`invoke(timeout)` (one call on `self.stub`/`self.channel`) at the address in use,
        then at each other address once if it cannot be reached, all within `timeout`.

        Each address gets its share of the time left, so one that never answers (not
        connected, or connected and silent) leaves time for the rest. Over a rate limit, the
        call is made again when the server says it may be, if that is within `timeout`."""
        deadline = time.monotonic() + timeout
        tried: list[str] = []
        while True:
            remaining = max(0.05, deadline - time.monotonic())
            untried = len(self.addrs) - len(tried)
            try:
                with self.closed_under("this call"):
                    return await invoke(remaining / max(untried, 1))
            except grpc.RpcError as error:
                wait = retry_after(error) if error.code() == RESOURCE_EXHAUSTED else None
                if wait is not None and time.monotonic() + wait < deadline:
                    await asyncio.sleep(wait)
                    continue
                tried.append(self.addr)
                last = len(tried) >= len(self.addrs) or time.monotonic() >= deadline
                if last or not fails_over(error):
                    raise self.error(error, tried) from None
                self.next_address()

    async def aclose(self) -> None:
        self.closed = True
        for channel, _ in self._channels.values():
            await channel.close(None)
