"""`grpcchat send`: post messages one after another, each only after the previous one was
accepted, so the output and the exit code say exactly what the server has."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from grpcchat.client import ChatClient, Sent
from grpcchat.client.config import ClientConfig


async def send_lines(
    config: ClientConfig,
    sender: str,
    lines: Iterable[str],
    on_accepted: Callable[[Sent], None],
    *,
    room: str = "",
    to: str = "",
    action: bool = False,
    key: str = "",
) -> int:
    """Send every line; return how many were accepted. Stops at the first failure (raised)."""
    count = 0
    async with ChatClient(config) as client:
        for line in lines:
            sent = await client.send(sender, line, room, recipient=to, action=action, key=key)
            on_accepted(sent)
            count += 1
    return count
