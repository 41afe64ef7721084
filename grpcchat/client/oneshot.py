"""`grpcchat send`: post messages and report each one the server accepted, in order, so the
output and the exit code say exactly what the server has.

One message is one unary `Send`. Several (stdin lines) go on one session stream as they come,
up to `window` in flight, each acknowledged on the stream: far fewer round trips than a call
each.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable
from typing import TYPE_CHECKING

from grpcchat.client.client import ChatClient
from grpcchat.client.config import ClientConfig
from grpcchat.client.events import Connected, Sent
from grpcchat.core.errors import InvalidInput
from grpcchat.core.models import Relation, RelationKind
from grpcchat.core.validation import check_message_id, check_text

if TYPE_CHECKING:
    from grpcchat.client.session import ChatSession

DEFAULT_WINDOW = 64
# A line followed this soon by the end of its input is one unary Send. Otherwise the lines go
# on one session stream, each as it comes: a pipe that writes a line now and then is not held
# up waiting for the next one (or the end).
LONE_LINE_WAIT = 0.2
# A reference with at most this many digits is a seq (ids are 32 hex digits; a seq fits in
# 64 bits; 19 digits always do).
MAX_SEQ_DIGITS = 19


async def send_lines(
    config: ClientConfig,
    sender: str,
    lines: Iterable[str] | AsyncIterable[str],
    on_accepted: Callable[[Sent], None],
    *,
    room: str = "",
    to: str = "",
    action: bool = False,
    key: str = "",
    reply_to: str = "",
    window: int = DEFAULT_WINDOW,
) -> int:
    """Send every line, each as soon as it comes (`lines` may be a pipe that keeps going);
    return how many were accepted. The first failure is raised once the messages already
    written have been answered (and the accepted ones reported); lines after it are not sent.
    With `reply_to` (a message id, or its seq in `room`) each is a reply; a `key` is for a
    single line."""
    async with ChatClient(config) as client:
        if reply_to:
            reply_to = await message_id(client, room, reply_to)
        source = _each(lines)
        first = await anext(source, None)
        if first is None:
            return 0
        following = asyncio.ensure_future(anext(source, None))
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(following), LONE_LINE_WAIT)
            if following.done() and following.result() is None:
                sent = await client.send(
                    sender, first, room, recipient=to, action=action, key=key, reply_to=reply_to
                )
                on_accepted(sent)
                return 1
            if key:
                raise InvalidInput("an idempotency key is for a single message; there are several")
            session = client.session(sender, (), patient=True)
            async with _live(session, config.timeout):
                lines_in_order = _then(first, following, source)
                return await _pipeline(
                    session, lines_in_order, on_accepted, room, to, action, reply_to, window
                )
        finally:
            following.cancel()


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
    lines: AsyncIterator[str],
    on_accepted: Callable[[Sent], None],
    room: str,
    to: str,
    action: bool,
    reply_to: str,
    window: int,
) -> int:
    """Send each line as it comes, on the session's stream, and report each accepted one as
    soon as it and every line before it are answered. At most `window` are sent and not yet
    reported; the first failure stops the sending (not the reporting of what was sent)."""
    slots = asyncio.Semaphore(window)
    sent_in_order: asyncio.Queue[asyncio.Future[Sent] | None] = asyncio.Queue()

    async def send_one(line: str) -> Sent:
        try:
            return await session.send(line, room, recipient=to, action=action, reply_to=reply_to)
        except BaseException:
            sending.cancel()  # no more lines: a pipe that keeps going must not hold us up
            raise

    async def send_all() -> None:
        try:
            async for line in lines:
                await slots.acquire()
                try:
                    # Checked here, in order, so that no line after a bad one is sent.
                    check_text(line)
                except InvalidInput as error:
                    refused: asyncio.Future[Sent] = asyncio.get_running_loop().create_future()
                    refused.set_exception(error)
                    sent_in_order.put_nowait(refused)
                    return
                sent_in_order.put_nowait(asyncio.create_task(send_one(line)))
        finally:
            sent_in_order.put_nowait(None)

    sending = asyncio.create_task(send_all())
    accepted, first_error = 0, None
    try:
        while (answer := await sent_in_order.get()) is not None:
            try:
                sent = await answer
            except Exception as error:
                first_error = first_error or error
                continue
            finally:
                slots.release()
            on_accepted(sent)
            accepted += 1
        if not sending.cancelled():  # a failure stopped it; else it raises what reading did
            await sending
    finally:
        sending.cancel()
    if first_error is not None:
        raise first_error
    return accepted


async def _each(lines: Iterable[str] | AsyncIterable[str]) -> AsyncIterator[str]:
    if isinstance(lines, AsyncIterable):
        async for line in lines:
            yield line
    else:
        for line in lines:
            yield line


async def _then(
    first: str, following: asyncio.Future[str | None], rest: AsyncIterator[str]
) -> AsyncIterator[str]:
    """`first`, then what `following` brings, then `rest`: lines already taken come first."""
    yield first
    if (second := await following) is None:
        return
    yield second
    async for line in rest:
        yield line


@contextlib.asynccontextmanager
async def _live(session: ChatSession, timeout: float) -> AsyncIterator[None]:  # noqa: ASYNC109
    """Run the session's stream in the background while the block sends on it, once it is
    connected: within `timeout`, retrying as a one-line send does, or raise why it is not."""
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
        try:
            async with asyncio.timeout(timeout):
                await connected.wait()
        except TimeoutError:
            raise session.not_connected(timeout) from None
        if failure:
            raise failure[0]
        yield
    finally:
        await session.aclose()
        follower.cancel()
        with contextlib.suppress(BaseException):
            await follower
