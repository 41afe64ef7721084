"""`grpcchat send`: post messages and report each one the server accepted, in order, so the
output and the exit code say exactly what the server has.

One message is one unary `Send`. Several (stdin lines) go on one session stream, up to
`window` in flight, each acknowledged on the stream: far fewer round trips than a call each.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING

from grpcchat.client.client import ChatClient
from grpcchat.client.config import ClientConfig
from grpcchat.client.events import Connected, Sent

if TYPE_CHECKING:
    from grpcchat.client.session import ChatSession

DEFAULT_WINDOW = 64


async def send_lines(
    config: ClientConfig,
    sender: str,
    lines: Sequence[str],
    on_accepted: Callable[[Sent], None],
    *,
    room: str = "",
    to: str = "",
    action: bool = False,
    key: str = "",
    window: int = DEFAULT_WINDOW,
) -> int:
    """Send every line; return how many were accepted. The first failure is raised once the
    messages already written have been answered (and the accepted ones reported); lines after
    it are not sent."""
    async with ChatClient(config) as client:
        if key or len(lines) <= 1:
            for line in lines:
                sent = await client.send(sender, line, room, recipient=to, action=action, key=key)
                on_accepted(sent)
            return len(lines)
        session = client.session(sender, ())
        async with _live(session):
            return await _pipeline(session, lines, on_accepted, room, to, action, window)


async def _pipeline(
    session: ChatSession,
    lines: Sequence[str],
    on_accepted: Callable[[Sent], None],
    room: str,
    to: str,
    action: bool,
    window: int,
) -> int:
    slots = asyncio.Semaphore(window)
    failed = asyncio.Event()

    async def send_one(line: str) -> Sent:
        try:
            return await session.send(line, room, recipient=to, action=action)
        except BaseException:
            failed.set()
            raise
        finally:
            slots.release()

    sending: list[asyncio.Task[Sent]] = []
    for line in lines:
        await slots.acquire()
        if failed.is_set():
            slots.release()
            break
        sending.append(asyncio.create_task(send_one(line)))
    accepted, first_error = 0, None
    for task in sending:
        try:
            sent = await task
        except Exception as error:
            first_error = first_error or error
            continue
        on_accepted(sent)
        accepted += 1
    if first_error is not None:
        raise first_error
    return accepted


@contextlib.asynccontextmanager
async def _live(session: ChatSession) -> AsyncIterator[None]:
    """Run the session's stream in the background while the block sends on it."""
    connected = asyncio.Event()
    failure: list[BaseException] = []

    async def follow() -> None:
        try:
            async for event in session.events():
                if isinstance(event, Connected):
                    connected.set()
        except BaseException as error:
            failure.append(error)
            connected.set()
            raise

    follower = asyncio.create_task(follow())
    try:
        await connected.wait()
        if failure:
            raise failure[0]
        yield
    finally:
        await session.aclose()
        follower.cancel()
        with contextlib.suppress(BaseException):
            await follower
