"""Opening a channel as the client config says: plaintext or TLS (optionally mutual), and the
bearer token as call metadata — never sent in the clear beyond this machine. A `Connection`
is that channel with its stub, shared by a client and its sessions."""

from __future__ import annotations

import grpc
from grpc import aio

from grpcchat.client.config import ClientConfig
from grpcchat.client.errors import remote_error
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
    target = addr.split("://", 1)[-1]
    if target.startswith("["):
        return target[1 : target.find("]")]
    return target.rsplit(":", 1)[0] if ":" in target else target


def is_loopback(addr: str) -> bool:
    host = _host(addr)
    if host == "localhost":
        return True
    import ipaddress

    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def open_channel(config: ClientConfig) -> tuple[aio.Channel, Metadata]:
    """The channel and the metadata every call must carry."""
    metadata: Metadata = (("authorization", f"Bearer {config.token}"),) if config.token else ()
    if not config.uses_tls:
        if config.token and not is_loopback(config.addr):
            raise InsecureTokenError(
                f"refusing to send a token in plaintext to {config.addr}; "
                "use --tls (system roots) or --tls-ca FILE"
            )
        return aio.insecure_channel(config.addr, options=_CHANNEL_OPTIONS), metadata

    from grpcchat.core.files import read_pem

    def optional(path: str, what: str) -> bytes | None:
        return read_pem(path, what) if path else None

    credentials = grpc.ssl_channel_credentials(
        root_certificates=optional(config.tls_ca, "CA file"),
        private_key=optional(config.tls_key, "client key"),
        certificate_chain=optional(config.tls_cert, "client certificate"),
    )
    return aio.secure_channel(config.addr, credentials, options=_CHANNEL_OPTIONS), metadata


class Connection:
    """One channel to one server: the stub every call goes through and the metadata every
    call carries. `error()` explains a failed call with what the channel knows."""

    def __init__(self, config: ClientConfig) -> None:
        self.config = config
        self.channel, self.metadata = open_channel(config)
        self.stub = pb_grpc.ChatServiceStub(self.channel)
        # Learned on the first UNIMPLEMENTED: the peer is the article's server.
        self.legacy_server = False

    def error(self, error: grpc.RpcError) -> RemoteError:
        """`error` as a RemoteError; call it as soon as the call fails, so the channel's
        state is the one the call failed in."""
        state = self.channel.get_state(try_to_connect=False)
        return remote_error(error, self.config.addr, state=state, tls=self.config.uses_tls)

    async def aclose(self) -> None:
        await self.channel.close(None)
