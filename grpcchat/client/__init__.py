"""The async client library: connect, send (idempotent retries), read history and presence,
and live sessions that reconnect and resume; against the article's server it falls back to the
v1 `Chat` stream. The CLI uses nothing else.

    async with ChatClient(ClientConfig(addr="localhost:4000")) as client:
        await client.send("bot", "deploy finished", "ci")
        async for event in client.session("alice", ["lobby"]).events():
            ...

The names below are imported on first use, so reading `grpcchat.client.config` does not load
gRPC (a one-shot `grpcchat send` pays for what it uses only).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from grpcchat.client.client import ChatClient
    from grpcchat.client.config import ClientConfig
    from grpcchat.client.events import Connected, FeedEvent, Reconnecting, Sent
    from grpcchat.client.session import ChatSession

__all__ = [
    "ChatClient",
    "ChatSession",
    "ClientConfig",
    "Connected",
    "FeedEvent",
    "Reconnecting",
    "Sent",
]


# Where each name lives (a module of this package), loaded when the name is first used.
_HOMES = {
    "ChatClient": "client",
    "ChatSession": "session",
    "ClientConfig": "config",
    "Connected": "events",
    "FeedEvent": "events",
    "Reconnecting": "events",
    "Sent": "events",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{home}"), name)
