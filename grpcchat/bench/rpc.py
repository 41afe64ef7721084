"""Raw calls: the four RPCs the bench drives, bytes in and bytes out (see frames), on a
`grpcchat.client` Connection (its channel, TLS and token handling).

No serializers run on either side: what a subscriber reads is the response exactly as it came
off the wire, and what it costs the bench is one regular-expression scan (frames). Failures are
read from the finished call (its status code and details), never from exception types, so this
module needs nothing from gRPC but the channel.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any, Protocol

from grpcchat.bench import frames
from grpcchat.client.channel import Connection
from grpcchat.client.config import ClientConfig, host_and_port
from grpcchat.core.errors import RemoteError

SERVICE = "/chat.v1.ChatService/"


class _Code(Protocol):
    @property
    def name(self) -> str: ...


class Call(Protocol):
    """What the bench uses of a gRPC call (any kind)."""

    def done(self) -> bool: ...
    def cancel(self) -> bool: ...
    async def code(self) -> _Code: ...
    async def details(self) -> str: ...
    async def initial_metadata(self) -> Any: ...
    async def trailing_metadata(self) -> Any: ...


class ReadCall(Call, Protocol):
    async def read(self) -> object: ...  # bytes, or gRPC's EOF (anything else)


class StreamCall(ReadCall, Protocol):
    async def write(self, request: bytes) -> None: ...
    async def done_writing(self) -> None: ...


class Raw:
    """One channel to one server (one HTTP/2 connection per process, shared with any other Raw
    to the same address) and the raw form of each RPC the bench uses."""

    def __init__(self, addr: str, timeout: float) -> None:
        self.addr = addr
        self.connection = Connection(ClientConfig(addr=addr, timeout=timeout))
        channel = self.connection.channel
        self._chat = channel.stream_stream(SERVICE + "Chat", None, None)
        self._connect = channel.stream_stream(SERVICE + "Connect", None, None)
        self._subscribe = channel.unary_stream(SERVICE + "Subscribe", None, None)
        self._send = channel.unary_unary(SERVICE + "Send", None, None)

    def chat(self) -> StreamCall:
        """The article's `Chat` stream, driven with write()/read()."""
        call: StreamCall = self._chat(None, metadata=self.connection.metadata)
        return call

    def connect(self) -> StreamCall:
        """A grpcchat session stream (`Connect`), driven with write()/read()."""
        call: StreamCall = self._connect(None, metadata=self.connection.metadata)
        return call

    def subscribe(self, request: bytes) -> ReadCall:
        call: ReadCall = self._subscribe(request, metadata=self.connection.metadata)
        return call

    def send(self, request: bytes, timeout: float) -> Any:
        """A unary `Send`: await it for the response bytes (it raises on failure; see status)."""
        return self._send(request, timeout=timeout, metadata=self.connection.metadata)

    async def aclose(self) -> None:
        await self.connection.aclose()


async def status(call: Call, addr: str) -> RemoteError | None:
    """How a finished call ended: None for OK, else a RemoteError with its code and details."""
    code = (await call.code()).name
    if code == "OK":
        return None
    details = await call.details() or ""
    if code == "UNAVAILABLE":
        return RemoteError(code, f"cannot reach a chat server at {addr} ({details or 'gone'})")
    if code == "UNIMPLEMENTED":
        return RemoteError(code, f"the server at {addr} does not implement this: {details}")
    return RemoteError(code, details or code)


def is_data(response: object) -> bool:
    """A read returned a message (bytes), not the end of the stream."""
    return isinstance(response, bytes)


async def check_protocol(addr: str, protocol: str, name: str, room: str, within: float) -> None:
    """Raise a RemoteError now, with the server's own status, if the server at `addr` cannot be
    reached or does not speak `protocol` (subscribers read raw HTTP/2 and see no statuses)."""
    await _check_listening(addr, within)
    await _check_speaks_grpc(addr, within)
    raw = Raw(addr, within)
    try:
        try:
            await asyncio.wait_for(raw.connection.channel.channel_ready(), within)
        except TimeoutError:
            raise RemoteError("UNAVAILABLE", f"cannot reach a chat server at {addr}") from None
        if protocol == "v1":
            call: ReadCall = raw.chat()
            wait = 0.5  # the article's server says nothing until it has a message to send
        else:
            call = raw.subscribe(frames.subscribe_request(name, room))
            wait = within
        try:
            try:
                await asyncio.wait_for(call.initial_metadata(), wait)
            except TimeoutError:
                pass
            except Exception:
                if not call.done():
                    raise
            if call.done():
                error = await status(call, addr)
                if error is not None and error.status == "UNIMPLEMENTED" and protocol != "v1":
                    raise RemoteError(
                        error.status,
                        f"the server at {addr} has no Subscribe (the article's server?): "
                        "use --protocol v1",
                    )
                if error is not None and error.status == "UNAUTHENTICATED":
                    raise RemoteError(
                        error.status,
                        f"the server at {addr} requires authentication, and the bench has no "
                        "tokens to present: load a server without --auth-secret",
                    )
                if error is not None:
                    raise error
        finally:
            call.cancel()
    finally:
        await raw.aclose()


async def _check_speaks_grpc(addr: str, within: float) -> None:
    """Raise at once, with gRPC's reason, for a port that listens but does not speak gRPC (an
    HTTP server, a TLS one): the channel would never become ready, and say so only after
    `within`. One health check, which fails fast; any answer at all is gRPC speaking (the
    article's server has no health service: UNIMPLEMENTED)."""
    from grpcchat.client.health import check_health

    try:
        await check_health(ClientConfig(addr=addr, timeout=within))
    except RemoteError as error:
        if error.status in ("UNAVAILABLE", "DEADLINE_EXCEEDED"):
            raise RemoteError("UNAVAILABLE", str(error)) from None


async def _check_listening(addr: str, within: float) -> None:
    """Raise at once for an address nothing listens at (gRPC's channel would keep trying it
    for `within`, and then say only that it never became ready)."""
    where = host_and_port(addr)
    if where is None:
        return
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(*where), within)
    except TimeoutError:
        raise RemoteError("UNAVAILABLE", f"cannot reach a chat server at {addr}") from None
    except OSError as error:
        # (asyncio's "Connect call failed (...)" is its strerror, the errno says why; a name
        # that does not resolve has a negative errno, which only its strerror explains.)
        code = error.errno or 0
        reason = os.strerror(code) if code > 0 else error.strerror or str(error)
        message = f"cannot reach a chat server at {addr} ({reason})"
        raise RemoteError("UNAVAILABLE", message) from None
    writer.close()
