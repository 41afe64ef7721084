"""What a failed call means, told from facts rather than from the wording of its details.

A failure is classified by its status code, the channel's connectivity state when it failed
(whether a connection to the server existed at all), whether this client speaks TLS, and the
call's trailing metadata. The details gRPC or the server wrote are shown, never parsed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import cast

import grpc
from grpc import aio

from grpcchat.core.errors import RemoteError
from grpcchat.wire import codec

# Failures a live session rides out by reconnecting; anything else is the caller's to handle.
RETRYABLE = frozenset(
    {"UNAVAILABLE", "RESOURCE_EXHAUSTED", "CANCELLED", "INTERNAL", "UNKNOWN", "DEADLINE_EXCEEDED"}
)

TLS_HINT = (
    "TLS handshake failed? Check --tls-ca, and whether the server needs TLS or a client "
    "certificate (--tls-cert/--tls-key)"
)

# A channel in these states has no connection to the server: every attempt to make one (name
# lookup, TCP connect, TLS and HTTP/2 handshakes) has failed, or it is still trying. A channel
# that is READY or IDLE had one, so an UNAVAILABLE from it is the server's answer or a
# connection that was lost, not an unreachable server.
NOT_CONNECTED = frozenset(
    {grpc.ChannelConnectivity.TRANSIENT_FAILURE, grpc.ChannelConnectivity.CONNECTING}
)


class ClientClosed(RemoteError):
    """A call on a ChatClient or a ChatSession that was closed (FAILED_PRECONDITION, as the
    server's caps are: tell them apart by this type)."""

    def __init__(self, message: str) -> None:
        super().__init__("FAILED_PRECONDITION", message)


class Unreachable(RemoteError):
    """UNAVAILABLE with no connection to the server: `addrs` were tried, over TLS or not."""

    def __init__(self, message: str, addrs: Sequence[str], *, tls: bool) -> None:
        super().__init__("UNAVAILABLE", message)
        self.addrs = tuple(addrs)
        self.tls = tls


def remote_error(
    error: grpc.RpcError,
    addrs: Sequence[str],
    *,
    state: grpc.ChannelConnectivity,
    tls: bool,
) -> RemoteError:
    """Turn a gRPC failure into a RemoteError with a message a person understands.

    `addrs` are the addresses the call was tried at, `state` the channel's connectivity when
    it failed and `tls` whether this client uses TLS. An unreachable server gets the TLS hint
    when the client speaks TLS: the handshake is then part of connecting, and gRPC reports a
    refused handshake (wrong CA, plaintext server, missing client certificate) exactly as it
    reports a refused connection, by the same code and state, so only the client's own
    configuration says TLS is in play. (A plaintext client at a TLS server looks the same
    again: `probe.explain` asks the server, once a command gives up.)
    """
    code: grpc.StatusCode = error.code()
    details = error.details() or ""
    addr = " or ".join(addrs)
    if code == grpc.StatusCode.UNAVAILABLE and (state in NOT_CONNECTED or not details):
        message = f"cannot reach a chat server at {addr} ({details or 'no response'})"
        if state not in NOT_CONNECTED:
            return RemoteError(code.name, message)
        return Unreachable(f"{message}. {TLS_HINT}" if tls else message, addrs, tls=tls)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        message = f"no answer from {addr} in time"
    elif code == grpc.StatusCode.UNAUTHENTICATED:
        message = f"not authenticated: {details}"
    else:
        message = details
    return RemoteError(code.name, message)


def retry_after(error: grpc.RpcError) -> float | None:
    """The server's hint, in seconds, for when a rate-limited call may be retried."""
    trailing = error.trailing_metadata() if isinstance(error, aio.AioRpcError) else None
    pairs = cast("Iterable[tuple[str, str | bytes]]", trailing or ())
    for key, value in pairs:
        if key == codec.RETRY_AFTER_KEY and isinstance(value, str) and value.isdigit():
            return int(value) / 1000
    return None


async def raise_status(call: aio.Call) -> None:
    """Raise the RpcError a finished call ended with (if it failed)."""
    code = await call.code()
    if code != grpc.StatusCode.OK:
        raise aio.AioRpcError(
            code,
            await call.initial_metadata(),
            await call.trailing_metadata(),
            await call.details(),
            "",
        )
