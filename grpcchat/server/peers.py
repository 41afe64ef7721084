"""A client's address without its port, the same however it arrived: per-address limits key on
it, so the gRPC port (`ipv6:%5B::1%5D:5000`) and the web port (`::1`, port apart) must name one
client alike, or it gets each limit twice."""

from __future__ import annotations

import ipaddress
from urllib.parse import unquote


def grpc_peer(peer: str) -> str:
    """`ipv4:127.0.0.1:5000` -> `127.0.0.1`; `ipv6:%5B::1%5D:5000` -> `::1`; anything else (a
    Unix socket) as it is."""
    kind, _, address = peer.partition(":")
    if kind not in ("ipv4", "ipv6"):
        return peer
    return canonical_address(unquote(address.rsplit(":", 1)[0]))


def canonical_address(host: str) -> str:
    """An IP address in one spelling: no brackets, IPv6 compressed, an IPv4-mapped IPv6 as its
    IPv4; a host that is not an IP address as it is."""
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)
