"""The chat server: composition root and lifecycle (`lifecycle`), the gRPC servicer
(`servicer`: protobuf <-> domain, status codes), authentication (`auth`), wire framing
(`framing`), and the engines chosen by URL (`engines`).

    async with ChatServer(ServerConfig(port=0)) as server:
        print(server.port)

`ChatServer` and `serve` are imported on first use, so reading `grpcchat.server.config` (the CLI
does, to show defaults) does not load gRPC.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from grpcchat.server.lifecycle import ChatServer, run, serve

__all__ = ["ChatServer", "run", "serve"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from grpcchat.server import lifecycle

        return getattr(lifecycle, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
