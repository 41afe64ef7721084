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

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from grpcchat.client.client import (
        ChatClient,
        ChatSession,
        Connected,
        FeedEvent,
        Reconnecting,
        Sent,
    )
    from grpcchat.client.config import ClientConfig

__all__ = [
    "ChatClient",
    "ChatSession",
    "ClientConfig",
    "Connected",
    "FeedEvent",
    "Reconnecting",
    "Sent",
]


def __getattr__(name: str) -> Any:
    if name == "ClientConfig":
        from grpcchat.client.config import ClientConfig

        return ClientConfig
    if name in __all__:
        from grpcchat.client import client

        return getattr(client, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
