"""A Subscribe session written to an HTTP response, and the cut-off of a response whose reader
stopped reading (the web side of `grpcchat.server.writer`)."""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import AsyncIterator

from grpcchat.core.errors import SlowConsumer
from grpcchat.core.session import Session
from grpcchat.gen.chat.v1 import chat_service_pb2 as pb
from grpcchat.server.auth import Identity
from grpcchat.server.counters import ServerStats
from grpcchat.server.framing import frame_events
from grpcchat.server.writer import (
    CLOSE_FLUSH_GRACE,
    close_when_token_expires,
    log_slow_consumer,
)

# How long a slow consumer's writer has to notice the end itself (it is not stuck behind the
# client, only behind the others) before its connection is closed.
SLOW_CONSUMER_GRACE = 1.0

# The response header of a Subscribe that tells its heartbeat in milliseconds ("0": none).
HEARTBEAT_HEADER = "grpcchat-heartbeat-ms"

log = logging.getLogger("grpcchat.web.stream")


class CutOff(Exception):
    """A response ended on purpose by closing its connection: its reader stopped reading, so
    no status can reach it. Raised to the HTTP server, which closes the connection."""


class Exchange:
    """One HTTP request being served: the task serving it, and whether it was cut off."""

    def __init__(self) -> None:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("an exchange is served by a task")
        self.task = task
        self.cut_off = False

    def cut(self) -> None:
        """Stop writing and close the connection (see `grpcchat.web.app`)."""
        self.cut_off = True
        self.task.cancel()


current_exchange: contextvars.ContextVar[Exchange] = contextvars.ContextVar("grpcchat_exchange")


async def stream_session(
    session: Session, identity: Identity | None, stats: ServerStats, heartbeat: float
) -> AsyncIterator[pb.SubscribeResponse]:
    """Be the session's writer until it ends; raises the ChatError that ended it. An empty
    response first (the stream is registered), then each batch as few responses as fit, and
    an empty one after `heartbeat` quiet seconds. With an identity, the session ends when its
    token expires. A writer stuck behind a client that stopped reading cannot notice the end:
    a watchdog then closes the connection."""
    exchange = current_exchange.get()
    watchdog: asyncio.Task[None] | None = None

    def start_watchdog() -> None:
        nonlocal watchdog
        watchdog = asyncio.create_task(_cut_when_stuck(session, exchange))

    forget_watchdog = session.on_closed(start_watchdog)  # taken back if the browser left first
    expiry = close_when_token_expires(session, identity)
    try:
        yield pb.SubscribeResponse()
        async for batch in session.batches(heartbeat):
            if not batch:
                yield pb.SubscribeResponse()
                continue
            # Encoded once per event for every stream (see framing); connectrpc's codecs want
            # message objects (binary or JSON), so each response is parsed back once here.
            for payload in frame_events(batch):
                yield pb.SubscribeResponse.FromString(payload)
            stats.wrote(batch)
    finally:
        forget_watchdog()
        if watchdog is not None:
            watchdog.cancel()
        if expiry is not None:
            expiry.cancel()


async def _cut_when_stuck(session: Session, exchange: Exchange) -> None:
    """Close the connection of a session that ended but whose writer is still stuck: a slow
    consumer after SLOW_CONSUMER_GRACE, any other after CLOSE_FLUSH_GRACE (the time its writer
    has to flush what was queued). Cancelled as soon as the writer finishes on its own."""
    slow = isinstance(session.error, SlowConsumer)
    await asyncio.sleep(SLOW_CONSUMER_GRACE if slow else CLOSE_FLUSH_GRACE)
    if slow:
        log_slow_consumer(log, session, "slow web consumer")
    exchange.cut()
