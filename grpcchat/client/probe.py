"""Why a plaintext client could not reach its server, when the answer is "it speaks TLS".

gRPC reports a plaintext client at a TLS server as a connection that closed ("Socket closed"),
just as it reports a server that is restarting. Only asking the server tells them apart: a
TLS handshake with it, certificates unchecked (nothing is sent over it), says whether TLS is
what it wants. Asked once, as a command gives up, never on a session's way to reconnecting.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import time

from grpcchat.client.config import host_and_port
from grpcchat.client.errors import Unreachable
from grpcchat.core.errors import ChatError, ConfigError

# A TLS server answers a ClientHello at once; the probe only runs when the command has failed.
# Every address it asks shares this time (a host name's lookup is the system's: not bounded).
PROBE_TIMEOUT = 1.0


def speaks_tls(addr: str, timeout: float = PROBE_TIMEOUT) -> bool:
    """Whether the server at `addr` completes a TLS handshake."""
    where = host_and_port(addr)
    if where is None:
        return False
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # only asking whether it speaks TLS: nothing is sent
    context.set_alpn_protocols(["h2"])
    try:
        with socket.create_connection(where, timeout=timeout) as raw:
            raw.settimeout(timeout)
            with context.wrap_socket(raw, server_hostname=where[0]) as tls:
                with contextlib.suppress(OSError):
                    tls.unwrap()
                return True
    except (OSError, ValueError, UnicodeError):
        return False


def explain(error: ChatError) -> ChatError:
    """The error a command gives up with, as it is, or, if a plaintext client could not reach
    a server that speaks TLS, as the setup problem it is, saying what to do about it."""
    if not isinstance(error, Unreachable) or error.tls:
        return error
    deadline = time.monotonic() + PROBE_TIMEOUT
    for addr in error.addrs:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        if speaks_tls(addr, left):
            return ConfigError(
                f"{error}. The server at {addr} speaks TLS: add --tls (trusting the system's "
                "CAs) or --tls-ca FILE"
            )
    return error
