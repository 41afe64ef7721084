"""Where and how a client connects: one frozen object built from flags and GRPCCHAT_* variables."""

from __future__ import annotations

import re

from grpcchat.core.records import record

DEFAULT_ADDR = "localhost:4000"
DEFAULT_TIMEOUT = 10.0
# The --timeout a command takes: beyond a year, gRPC's deadlines overflow (a call never ends).
MIN_TIMEOUT = 0.1
MAX_TIMEOUT = 365 * 86400.0


# A host name or IPv4 address, or an IPv6 address in brackets; then a port.
_HOST_PORT = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):([0-9]{1,5})")
# What an HTTP/2 header value can carry: printable ASCII (a JWT is base64url and dots).
_TOKEN = re.compile(r"[!-~]+")


class AddressError(ValueError):
    """`--addr` is not a list of distinct `host:port` addresses (a usage error)."""


def parse_addrs(addr: str) -> tuple[str, ...]:
    """`host1:4001,host2:4002` as its addresses, in order; AddressError naming what is wrong.
    A `unix:PATH` entry is taken as it is (gRPC's own target for a local socket)."""
    entries = [entry.strip() for entry in addr.split(",")]
    if any(not entry for entry in entries):
        raise AddressError(f"--addr {addr!r} has an empty entry; give host:port[,host:port...]")
    for entry in entries:
        if entry.startswith("unix:"):
            if not entry.removeprefix("unix:").lstrip("/"):
                raise AddressError(f"--addr: {entry!r} names no socket (unix:/path/to/socket)")
            continue
        match = _HOST_PORT.fullmatch(entry)
        if match is None or not 1 <= int(match.group(1)) <= 65535:
            raise AddressError(f"--addr: {entry!r} is not host:port (port 1-65535)")
    duplicates = sorted({entry for entry in entries if entries.count(entry) > 1})
    if duplicates:
        raise AddressError(f"--addr names {', '.join(duplicates)} more than once")
    return tuple(entries)


def host_and_port(addr: str) -> tuple[str, int] | None:
    """`host:port` or `[v6]:port` (gRPC's `dns:` and `ipv4:`/`ipv6:` prefixes allowed) as a
    pair, the host without brackets; None for a target no socket can dial (a Unix socket, no
    port)."""
    target = addr
    for scheme in ("dns:///", "dns:", "ipv4:", "ipv6:"):
        if target.startswith(scheme):
            target = target[len(scheme) :]
            break
    if ":" not in target or target.startswith("unix"):
        return None
    if target.startswith("["):
        host, _, rest = target[1:].partition("]")
        port = rest.removeprefix(":")
    else:
        host, _, port = target.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    return host, int(port)


@record
class ClientConfig:
    """Where and how a client connects."""

    # One server `host:port`, or several separated by commas: the client starts with the
    # first and moves on to the next (round-robin) when it cannot reach the one in use.
    addr: str = DEFAULT_ADDR
    # Deadline for one unary call (send) including retries, in seconds.
    timeout: float = DEFAULT_TIMEOUT
    # Bearer token for a server with authentication on.
    token: str = ""
    # TLS: `tls` alone trusts the system's roots; `tls_ca` trusts that CA file instead.
    # `tls_cert`/`tls_key` present a client certificate (mutual TLS).
    tls: bool = False
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""

    def __post_init__(self) -> None:
        parse_addrs(self.addr)
        if self.timeout <= 0:
            raise ValueError("timeout must be positive")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("a client certificate needs both --tls-cert and --tls-key")
        if self.token and not _TOKEN.fullmatch(self.token):
            # It goes in a header, where gRPC takes nothing else (and fails with a traceback).
            raise ValueError(
                "--token is not a token: a token is printable ASCII without spaces, "
                "as `grpcchat token` prints it"
            )

    @property
    def addrs(self) -> tuple[str, ...]:
        """The addresses `addr` lists, in order (validated when the config was made)."""
        return parse_addrs(self.addr)

    @property
    def uses_tls(self) -> bool:
        return self.tls or bool(self.tls_ca or self.tls_cert)
