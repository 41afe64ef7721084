"""The web port's connections, bounded as the gRPC port's are: a request's head must arrive
within HEAD_DEADLINE of the connection opening (or of the answer before it), and one address may
hold at most so many connections at once. uvicorn bounds neither: its keep-alive timer starts
only after a response and any byte stops it, so a connection that sends nothing, or its head a
byte at a time, was held for good, and a thousand of them shut everyone else out of the port
(and, with the process's file descriptors spent, out of the gRPC port too).

The protocol is uvicorn's own h11 one (always h11, also where httptools is installed: its
header bounds are the ones configured), with those two checks added.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

from grpcchat.core.limits import Limits
from grpcchat.server.peers import canonical_address

# Seconds for a request's head (request line and headers) to arrive.
HEAD_DEADLINE = 10.0
# Connections an address may hold beyond its sessions (each web stream holds one): its unary
# calls and the page's own files.
CONNECTION_HEADROOM = 64

log = logging.getLogger("grpcchat.web")


def connections_per_address(limits: Limits) -> int:
    """As many as the address may hold sessions, and a few more (0: no limit, as for those)."""
    per_peer = limits.max_sessions_per_peer
    return per_peer + CONNECTION_HEADROOM if per_peer else 0


def guarded_protocol(max_per_address: int) -> type[H11Protocol]:
    """uvicorn's h11 protocol with a head deadline and at most `max_per_address` connections
    from one address (0: no such limit)."""
    open_by_address: Counter[str] = Counter()

    class GuardedH11Protocol(H11Protocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._address = ""
            self._head_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            address = canonical_address(self.client[0]) if self.client else ""
            if max_per_address and address and open_by_address[address] >= max_per_address:
                _refuse(transport, f"{address} already has {max_per_address} connections open")
                return
            if address:
                self._address = address
                open_by_address[address] += 1
            self._await_head()

        def connection_lost(self, exc: Exception | None) -> None:
            self._head_arrived()
            if self._address:
                open_by_address[self._address] -= 1
                if not open_by_address[self._address]:
                    del open_by_address[self._address]
                self._address = ""
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            # The first bytes of the next request on a kept-alive connection (an idle one is
            # closed by uvicorn's keep-alive timer, which any byte stops).
            if self._head_timer is None and (self.cycle is None or self.cycle.response_complete):
                self._await_head()
            super().data_received(data)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            # The next request's head must come whole in time too, also when its first bytes
            # came with the last request's (no later read arms the timer for those).
            if self.cycle is not None and self.cycle.response_complete:
                self._await_head()

        def handle_events(self) -> None:
            cycle = self.cycle
            super().handle_events()
            if self.cycle is not cycle:  # a request's head was parsed
                self._head_arrived()

        def _await_head(self) -> None:
            if self._head_timer is None and not self.transport.is_closing():
                self._head_timer = self.loop.call_later(HEAD_DEADLINE, self._head_too_slow)

        def _head_arrived(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_too_slow(self) -> None:
            self._head_timer = None
            if not self.transport.is_closing():
                log.debug(
                    "closed a connection from %s: no request within %gs",
                    self._address,
                    HEAD_DEADLINE,
                    extra={"event": "web_connection_idle", "peer": self._address},
                )
                self.transport.close()

    return GuardedH11Protocol


def _refuse(transport: asyncio.Transport, why: str) -> None:
    """Answer a connection that may not open with a 503 saying why, and close it."""
    body = f"{why}; try again later\n".encode()
    transport.write(
        b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n"
        b"connection: close\r\ncontent-length: %d\r\n\r\n%b" % (len(body), body)
    )
    transport.close()
