"""`grpcchat send`: post messages one after another, each only after the previous one was
accepted, so the output and the exit code say exactly what the server has."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from grpcchat.client import ChatClient
from grpcchat.config import ClientConfig
from grpcchat.models import Message


async def send_lines(
    config: ClientConfig,
    sender: str,
    room: str,
    lines: Iterable[str],
    on_accepted: Callable[[Message], None],
) -> int:
    """Send every line; return how many were accepted. Stops at the first failure (raised)."""
    count = 0
    async with ChatClient(config) as client:
        for line in lines:
            on_accepted(await client.send(sender, line, room))
            count += 1
    return count
