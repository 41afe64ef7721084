"""A session's writer: drains its queue into its gRPC call, encoded by `encode`, until it ends,
and makes sure the call ends even when the client stopped reading."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime

from grpcchat.core.errors import SlowConsumer, Unauthenticated
from grpcchat.core.models import Envelope
from grpcchat.core.session import Session
from grpcchat.server.auth import Identity
from grpcchat.server.counters import ServerStats
from grpcchat.server.status import Context, abort

# How long a session that ended (half-close, expired token, drain) may take to flush what it
# had queued before its call is ended anyway: its client may have stopped reading.
CLOSE_FLUSH_GRACE = 10.0

log = logging.getLogger("grpcchat.server.writer")


async def write_session(
    session: Session,
    context: Context,
    identity: Identity | None,
    encode: Callable[[list[Envelope]], list[bytes]],
    *,
    headers_sent: bool = False,
    stats: ServerStats | None = None,
    heartbeat: float = 0,
) -> None:
    """Be the session's writer until it ends; raises the error that ended it. With an
    identity, the session ends when its token expires. Each batch written is counted in
    `stats`. With a `heartbeat` (seconds), a stream quiet for that long gets an empty response
    (only for response types that are a list of events: an empty one is a real message that
    carries nothing)."""
    # A client that stops reading leaves our write pending forever (HTTP/2 flow control), so
    # the write loop cannot notice its own eviction: a watchdog ends the call instead. It
    # is started only when the session ends, so an idle session costs no task of its own.
    watchdog: asyncio.Task[None] | None = None

    def start_watchdog() -> None:
        nonlocal watchdog
        watchdog = asyncio.create_task(_abort_when_ended(session, context))

    # Taken back when this writer ends first (its call was cancelled, the usual end of a
    # stream): a watchdog then would hold the call for CLOSE_FLUSH_GRACE and fail to abort it.
    forget_watchdog = session.on_closed(start_watchdog)
    expiry = close_when_token_expires(session, identity)
    try:
        if not headers_sent:
            # Headers now, not with the first event: they tell the client the session is
            # registered, so everything posted from here on will reach it.
            await context.send_initial_metadata(())
        async for batch in session.batches(heartbeat):
            if not batch:
                await context.write(b"")  # a heartbeat: an empty SubscribeResponse/ConnectResponse
                continue
            for payload in encode(batch):
                await context.write(payload)
            if stats is not None:
                stats.wrote(batch)
    except SlowConsumer:
        if watchdog is not None:
            await watchdog
    finally:
        forget_watchdog()
        if watchdog is not None:
            watchdog.cancel()
        if expiry is not None:
            expiry.cancel()


async def _abort_when_ended(session: Session, context: Context) -> None:
    """End the call of a session that ended, even while its writer is stuck behind a client
    that stopped reading: a slow consumer at once, any other within CLOSE_FLUSH_GRACE (the
    time its writer has to flush what was queued)."""
    if isinstance(session.error, SlowConsumer):
        log_slow_consumer(log, session, "slow consumer")
        await abort(context, session.error)
        return
    await asyncio.sleep(CLOSE_FLUSH_GRACE)
    await abort(context, session.error or SlowConsumer("the session ended but was not read"))


def log_slow_consumer(logger: logging.Logger, session: Session, what: str) -> None:
    """The warning (event `slow_consumer_disconnected`) for a session cut off as `what`."""
    rooms = ", ".join(f"#{room}" for room in session.rooms_at_close) or "no rooms"
    logger.warning(
        "disconnecting %s %r (%s)",
        what,
        session.name or session.peer,
        rooms,
        extra={
            "event": "slow_consumer_disconnected",
            "session": session.name,
            "peer": session.peer,
            "rooms": list(session.rooms_at_close),
        },
    )


def close_when_token_expires(
    session: Session, identity: Identity | None
) -> asyncio.TimerHandle | None:
    """End the session (UNAUTHENTICATED) when the caller's token expires; cancel the handle
    when the session ends first. None without an identity (auth off)."""
    if identity is None:
        return None
    delay = (identity.expires_at - datetime.now(UTC)).total_seconds()
    expired = Unauthenticated("token expired; mint a new one with `grpcchat token`")
    return asyncio.get_running_loop().call_later(delay, session.close, expired)
