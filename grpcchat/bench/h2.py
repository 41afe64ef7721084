"""A subscriber's call read straight off the socket: one gRPC call on an HTTP/2 connection of its
own, spoken by hand (plaintext only), so reading a delivery costs the bench about a microsecond
of Python instead of a gRPC read (~30 µs here, which would make the bench what is measured).

It does what a gRPC client must to receive: the connection preface and SETTINGS, the request
HEADERS (HPACK literals, never indexed, so no table is kept), the request message for a unary
request (Subscribe), ACKs for the server's SETTINGS and PINGs, and WINDOW_UPDATEs as the data is
consumed. It never decodes the server's headers: HEADERS without END_STREAM is the response
starting (grpcchat sends it once the subscriber is registered), HEADERS with END_STREAM (the
trailers), RST_STREAM or GOAWAY is the call ending. The DATA payloads (gRPC-framed messages, frame
headers removed) go to `on_data` as they arrive, in order, and are scanned there for markers.

One connection per subscriber is also how the article's Go clients connect (a process each).

`reading=False` is a session that never reads: it advertises the default 64 KiB stream window
and never opens it further, exactly what a client that stops reading does to the server.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_DATA, _HEADERS, _RST_STREAM, _SETTINGS, _PING, _GOAWAY, _WINDOW_UPDATE = 0, 1, 3, 4, 6, 7, 8
_END_STREAM, _ACK, _END_HEADERS, _PADDED, _PRIORITY = 0x1, 0x1, 0x4, 0x8, 0x20
_SETTINGS_ENABLE_PUSH, _SETTINGS_INITIAL_WINDOW_SIZE = 0x2, 0x4
_WRITE_BUFFER_HIGH = 1 << 18  # bytes queued in our transport before a writer waits
_STREAM = 1  # the one stream of the connection
_DEFAULT_WINDOW = 65_535
_READ_WINDOW = 1 << 20  # a reader's stream window; reopened once half of it was consumed
_CONNECTION_WINDOW = (1 << 31) - 1


def _frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return (
        len(payload).to_bytes(3, "big")
        + bytes((kind, flags))
        + stream.to_bytes(4, "big")
        + (payload)
    )


def _integer(value: int, prefix_bits: int, first: int = 0) -> bytes:
    """An HPACK integer with an N-bit prefix (RFC 7541, 5.1)."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _literal(name: str, value: str) -> bytes:
    """A header as "literal without indexing, new name" (RFC 7541, 6.2.2), no Huffman."""
    encoded_name, encoded_value = name.encode(), value.encode()
    return (
        b"\x00"
        + _integer(len(encoded_name), 7)
        + encoded_name
        + _integer(len(encoded_value), 7)
        + encoded_value
    )


def request_headers(authority: str, path: str) -> bytes:
    """The HPACK block of a gRPC request."""
    headers = (
        (":method", "POST"),
        (":scheme", "http"),
        (":path", path),
        (":authority", authority),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
        ("user-agent", "grpcchat-bench"),
    )
    return b"".join(_literal(name, value) for name, value in headers)


def grpc_message(message: bytes) -> bytes:
    """A gRPC length-prefixed message (not compressed)."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


def split_addr(addr: str) -> tuple[str, int]:
    """("host", port) of "host:port" or "[v6]:port" (a "dns:///" or "ipv4:" prefix dropped)."""
    target = addr.split("///", 1)[-1]
    for scheme in ("ipv4:", "ipv6:"):
        target = target.removeprefix(scheme)
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"the bench needs host:port, not {addr!r}")
    return host.strip("[]"), int(port)


class H2Call(asyncio.Protocol):
    """One gRPC call on a connection of its own: it receives, and (a v1 publisher) writes
    messages within the server's flow-control windows, as a gRPC client's `write()` does."""

    def __init__(
        self,
        authority: str,
        path: str,
        request: bytes | None,
        on_data: Callable[[bytes], None],
        *,
        reading: bool = True,
    ) -> None:
        """`request`: the request message of a unary-request call (Subscribe), or None for a
        stream that never writes (a v1 subscriber on Chat: a half-close would end it)."""
        self._authority = authority
        self._path = path
        self._request = request
        self._on_data = on_data
        self._reading = reading
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None
        self._consumed = 0  # DATA bytes since the last WINDOW_UPDATE
        # What the server lets us send (RFC 9113, 6.9): the connection's and the stream's.
        self._send_connection = _DEFAULT_WINDOW
        self._send_stream = _DEFAULT_WINDOW
        self._peer_initial = _DEFAULT_WINDOW
        self._can_write = asyncio.Event()  # windows open and our transport not paused
        self._paused = False
        self.responded = asyncio.Event()  # the response headers came: the call is registered
        self.ended: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        transport.set_write_buffer_limits(high=_WRITE_BUFFER_HIGH)
        window = _READ_WINDOW if self._reading else _DEFAULT_WINDOW
        settings = _SETTINGS_ENABLE_PUSH.to_bytes(2, "big") + (0).to_bytes(4, "big")
        settings += _SETTINGS_INITIAL_WINDOW_SIZE.to_bytes(2, "big") + window.to_bytes(4, "big")
        out = [
            PREFACE,
            _frame(_SETTINGS, 0, 0, settings),
            _frame(_WINDOW_UPDATE, 0, 0, (_CONNECTION_WINDOW - _DEFAULT_WINDOW).to_bytes(4, "big")),
        ]
        block = request_headers(self._authority, self._path)
        out.append(_frame(_HEADERS, _END_HEADERS, _STREAM, block))
        if self._request is not None:
            out.append(_frame(_DATA, _END_STREAM, _STREAM, grpc_message(self._request)))
        transport.write(b"".join(out))
        self._update_can_write()

    def pause_writing(self) -> None:
        self._paused = True
        self._update_can_write()

    def resume_writing(self) -> None:
        self._paused = False
        self._update_can_write()

    def _update_can_write(self) -> None:
        if self.ended.done() or (
            not self._paused and min(self._send_connection, self._send_stream) > 0
        ):
            self._can_write.set()
        else:
            self._can_write.clear()

    def connection_lost(self, exc: Exception | None) -> None:
        self._end(f"connection lost ({exc})" if exc else "connection closed")

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        size = len(buffer)
        at = 0
        payloads: list[bytes] = []
        while size - at >= 9:
            length = buffer[at] << 16 | buffer[at + 1] << 8 | buffer[at + 2]
            end = at + 9 + length
            if end > size:
                break
            kind = buffer[at + 3]
            flags = buffer[at + 4]
            if kind == _DATA:
                start, stop = at + 9, end
                if flags & _PADDED:
                    stop -= buffer[start]
                    start += 1
                payloads.append(bytes(buffer[start:stop]))
                self._consumed += length
                if flags & _END_STREAM:
                    self._end("the server ended the stream")
            elif kind == _HEADERS:
                if flags & _END_STREAM:
                    self._end("the server ended the call")
                else:
                    self.responded.set()
            elif kind == _SETTINGS:
                if not flags & _ACK:
                    self._settings(bytes(buffer[at + 9 : end]))
                    self._write(_frame(_SETTINGS, _ACK, 0))
            elif kind == _WINDOW_UPDATE:
                increment = int.from_bytes(buffer[at + 9 : end], "big") & 0x7FFFFFFF
                if not int.from_bytes(buffer[at + 5 : at + 9], "big") & 0x7FFFFFFF:
                    self._send_connection += increment
                else:
                    self._send_stream += increment
                self._update_can_write()
            elif kind == _PING:
                if not flags & _ACK:
                    self._write(_frame(_PING, _ACK, 0, bytes(buffer[at + 9 : end])))
            elif kind == _RST_STREAM:
                self._end("the server reset the stream")
            elif kind == _GOAWAY:
                self._end("the server closed the connection (GOAWAY)")
            at = end
        del buffer[:at]
        if payloads:
            self._on_data(payloads[0] if len(payloads) == 1 else b"".join(payloads))
        if self._consumed >= _READ_WINDOW // 2:
            grant = self._consumed.to_bytes(4, "big")
            self._consumed = 0
            update = _frame(_WINDOW_UPDATE, 0, 0, grant)
            if self._reading:
                update += _frame(_WINDOW_UPDATE, 0, _STREAM, grant)
            self._write(update)

    def _settings(self, payload: bytes) -> None:
        for at in range(0, len(payload) - 5, 6):
            if int.from_bytes(payload[at : at + 2], "big") == _SETTINGS_INITIAL_WINDOW_SIZE:
                value = int.from_bytes(payload[at + 2 : at + 6], "big")
                self._send_stream += value - self._peer_initial
                self._peer_initial = value
        self._update_can_write()

    # -- the call ---------------------------------------------------------------------------

    async def write(self, message: bytes) -> None:
        """Send one request message once the server's windows have room for it (waiting, as a
        gRPC client's write does, while it does not read); ConnectionError if the call ended."""
        data = grpc_message(message)
        while True:
            if self.ended.done():
                raise ConnectionError(self.ended.result() if not self.ended.cancelled() else "")
            room = min(self._send_connection, self._send_stream)
            if room >= len(data) and not self._paused:
                break
            self._can_write.clear()
            await self._can_write.wait()  # set by a WINDOW_UPDATE, a resume or the end
        self._send_connection -= len(data)
        self._send_stream -= len(data)
        self._write(_frame(_DATA, 0, _STREAM, data))

    def done_writing(self) -> None:
        """Half-close: the request stream ends (the article's server then returns)."""
        self._write(_frame(_DATA, _END_STREAM, _STREAM))

    def _write(self, data: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    def _end(self, reason: str) -> None:
        if not self.ended.done():
            self.ended.set_result(reason)
        self._can_write.set()  # a waiting writer sees the end

    def close(self) -> None:
        """Cancel the call (RST_STREAM, as a cancelled gRPC call does) and close."""
        if self._transport is not None and not self._transport.is_closing():
            with contextlib.suppress(Exception):
                self._transport.write(_frame(_RST_STREAM, 0, _STREAM, (8).to_bytes(4, "big")))
            self._transport.close()
        self._end("closed")


async def open_call(
    addr: str,
    path: str,
    request: bytes | None,
    on_data: Callable[[bytes], None],
    *,
    reading: bool = True,
) -> H2Call:
    """Connect to `addr` (plaintext) and start the call; OSError if it cannot connect."""
    host, port = split_addr(addr)
    loop = asyncio.get_running_loop()
    _, call = await loop.create_connection(
        lambda: H2Call(addr, path, request, on_data, reading=reading), host, port
    )
    return call
