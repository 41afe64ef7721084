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
from grpcchat.core.models import Relation, RelationKind
from grpcchat.core.validation import check_message_id

if TYPE_CHECKING:
    from grpcchat.client.session import ChatSession

DEFAULT_WINDOW = 64
# A reference with at most this many digits is a seq (ids are 32 hex digits; a seq fits in
# 64 bits; 19 digits always do).
MAX_SEQ_DIGITS = 19


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
    reply_to: str = "",
    window: int = DEFAULT_WINDOW,
) -> int:
    """Send every line; return how many were accepted. The first failure is raised once the
    messages already written have been answered (and the accepted ones reported); lines after
    it are not sent. With `reply_to` (a message id, or its seq in `room`) each is a reply."""
    async with ChatClient(config) as client:
        if reply_to:
            reply_to = await message_id(client, room, reply_to)
        if key or len(lines) <= 1:
            for line in lines:
                sent = await client.send(
                    sender, line, room, recipient=to, action=action, key=key, reply_to=reply_to
                )
                on_accepted(sent)
            return len(lines)
        session = client.session(sender, ())
        async with _live(session):
            return await _pipeline(session, lines, on_accepted, room, to, action, reply_to, window)


async def send_relation(
    config: ClientConfig,
    sender: str,
    kind: RelationKind,
    target: str,
    text: str,
    *,
    room: str = "",
    key: str = "",
) -> Sent:
    """Edit, delete, react to or take back a reaction to the message `target` of `room` (its
    id, or its seq there: all digits); `text` is an edit's new text or a reaction's emoji.
    Returns the relation entry as the server accepted it."""
    async with ChatClient(config) as client:
        target = await message_id(client, room, target)
        reacting = kind in (RelationKind.REACT, RelationKind.UNREACT)
        relation = Relation(kind, target, text if reacting else "")
        body = text if kind is RelationKind.EDIT else ""
        return await client.send(sender, body, room, key=key, relation=relation)


async def message_id(client: ChatClient, room: str, ref: str) -> str:
    """The id of the message `ref` names: an id as `send --json` prints it, or the message's
    seq in `room` (all digits), looked up with one History call."""
    if ref.isascii() and ref.isdigit() and len(ref) <= MAX_SEQ_DIGITS:
        return (await client.message_at(room, int(ref))).id
    return check_message_id(ref)


async def _pipeline(
    session: ChatSession,
    lines: Sequence[str],
    on_accepted: Callable[[Sent], None],
    room: str,
    to: str,
    action: bool,
    reply_to: str,
    window: int,
) -> int:
    slots = asyncio.Semaphore(window)
    failed = asyncio.Event()

    async def send_one(line: str) -> Sent:
        try:
            return await session.send(line, room, recipient=to, action=action, reply_to=reply_to)
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
