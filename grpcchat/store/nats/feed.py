"""`Feed`: the `RoomFeed` on JetStream, every room's appends (by any process) in stream order.

One ordered JetStream consumer over every room's subject (one per process, never one per client
or room), from the stream's end at the first `follow`, and from the last message delivered at
the next. nats-py's ordered consumer recreates itself after a missed delivery or two missed
heartbeats; its messages are only ever those JetStream stored (a core subscription would also
see refused publishes).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import NoReturn

import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy, StreamInfo

from grpcchat.core.errors import HistoryReplaced, StoreError
from grpcchat.core.models import Message
from grpcchat.store.nats.codec import Stored
from grpcchat.store.nats.connection import (
    EPOCH_KEY,
    NATS_ERRORS,
    REQUEST_TIMEOUT,
    Link,
    errors,
    reason,
)
from grpcchat.store.nats.reader import Reader

log = logging.getLogger("grpcchat.store")

# The feed's consumer sends a heartbeat this often when idle; nats-py recreates it (from the
# last stream seq delivered) after two missed ones, or when a delivery is missing.
FEED_HEARTBEAT = 2.0
# How long the stream must keep looking gone (or shorter than what was seen) before the history
# counts as lost: in a NATS cluster electing a stream leader, a member answers from its own
# copy, which may not be loaded yet or lag behind.
CONFIRM_LOST = 10.0
# How often a following feed checks that its stream is still there (one request).
STREAM_CHECK = 5.0


class Feed:
    def __init__(
        self,
        js: JetStreamContext,
        link: Link,
        reader: Reader,
        prefix: str,
        saw: Callable[[Stored], None],
        epoch: str,
    ) -> None:
        """`saw` is told of every entry before it is delivered (to keep this process's view
        of the rooms current); `epoch` is the history's, as the store opened it."""
        self._epoch = epoch
        # Since when the stream has looked gone or shorter, if it does (see CONFIRM_LOST).
        self._doubted_since: float | None = None
        self._js = js
        self._link = link
        self._reader = reader
        self._prefix = prefix
        self._saw = saw
        # The stream seq the feed continues from (set by its first `follow`).
        self._from = 0

    async def follow(
        self,
        deliver: Callable[[Message], None],
        following: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """Deliver every append until the connection is lost (StoreError, at once: what was
        appended meanwhile is read again by the next call, from the last stream seq delivered)
        or the store closes; `following` is awaited once subscribed. A call made while nats-py
        reconnects waits for it, at most REQUEST_TIMEOUT."""
        if not self._link.up.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(REQUEST_TIMEOUT):
                    await self._link.up.wait()
            self._link.check_connected("follow the rooms")
        with errors("follow the rooms"):
            info = await self._check_stream()
            if not self._from:
                self._from = info.state.last_seq + 1
            subscription = await self._js.subscribe(
                f"{self._prefix}>",
                stream=self._reader.stream,
                ordered_consumer=True,
                idle_heartbeat=FEED_HEARTBEAT,
                config=ConsumerConfig(
                    deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                    opt_start_seq=self._from,
                ),
            )
        loop = asyncio.get_running_loop()
        consume = loop.create_task(self._consume(subscription, deliver))
        watch = loop.create_task(self._watch_stream())
        lost = loop.create_task(self._link.down.wait())
        try:
            if following is not None:
                await following()
            await asyncio.wait([consume, watch, lost], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (consume, watch, lost):
                task.cancel()
            await asyncio.wait([consume, watch, lost])
            with contextlib.suppress(*NATS_ERRORS):
                await subscription.unsubscribe()
        if self._link.closing:
            return
        if not watch.cancelled():
            watch.result()  # HistoryReplaced
        if not consume.cancelled():
            consume.result()  # StoreError, or the subscription ended (the connection closed)
        raise StoreError(f"lost the connection to NATS ({self._link.where})")

    async def _watch_stream(self) -> NoReturn:
        """While following, check every STREAM_CHECK that the stream is still the one opened,
        and raise once it is not. nats-py's ordered consumer does not tell: when the stream
        is deleted under it, it fails to recreate itself with a word only to the connection's
        error callback, and the feed waited for ever, health SERVING, while every send
        failed. Only a loss that is sure (HistoryReplaced) ends the feed: a stream that only
        looks lost (a cluster electing a leader) or a check that gets no answer is checked
        again at the next (a lost connection is `follow`'s to notice)."""
        failing = False
        while True:
            await asyncio.sleep(STREAM_CHECK)
            doubted = self._doubted_since is not None
            try:
                await self._check_stream()
            except HistoryReplaced:
                raise
            except StoreError as exc:
                if not doubted:  # once, as it starts to look lost
                    log.warning("%s", exc, extra={"event": "history_check_failed"})
            except NATS_ERRORS as exc:
                if not failing:  # once, until a check gets an answer again
                    log.warning(
                        "checking the history stream on NATS failed: %s",
                        reason(exc),
                        extra={"event": "history_check_failed"},
                    )
                failing = True
                continue
            failing = False

    async def _check_stream(self) -> StreamInfo:
        """The stream, which must be the one this store opened and hold at least what the feed
        has seen (see `_doubt`)."""
        seen = self._from  # before asking: the feed may deliver what is stored meanwhile
        info = await self._stream_info()
        if seen and info.state.last_seq + 1 < seen:
            leaderless = info.cluster is not None and not info.cluster.leader
            self._doubt("it holds fewer entries than were seen", leaderless)
        self._doubted_since = None
        return info

    async def _stream_info(self) -> StreamInfo:
        """The stream, which must still be the one this store opened: the same epoch."""
        try:
            info = await self._js.stream_info(self._reader.stream)
        except nats.js.errors.NotFoundError:
            self._doubt("it is gone", leaderless=False)
        epoch = (info.config.metadata or {}).get(EPOCH_KEY)
        if epoch != self._epoch:
            raise HistoryReplaced(self._replaced(f"it is another history now (epoch {epoch})"))
        return info

    def _doubt(self, why: str, leaderless: bool) -> NoReturn:
        """The stream looks lost: HistoryReplaced once it has for CONFIRM_LOST, a StoreError
        (the feed is tried again) until then, or while the answer came from no leader."""
        now = time.monotonic()
        if self._doubted_since is None:
            self._doubted_since = now
        if leaderless:
            raise StoreError(
                f"the history stream on NATS looks lost ({why}), but its cluster has no "
                "leader yet: checking again"
            )
        if now - self._doubted_since < CONFIRM_LOST:
            raise StoreError(
                f"the history stream on NATS looks lost ({why}): checking again, for "
                f"{CONFIRM_LOST:g}s at most"
            )
        raise HistoryReplaced(self._replaced(why))

    def _replaced(self, why: str) -> str:
        return (
            f"the history stream {self._reader.stream} on NATS ({self._link.where}) is not the "
            f"one this server opened (epoch {self._epoch}): {why}; was NATS's storage lost? "
            "Start the server again to serve the history there is"
        )

    async def _consume(
        self, subscription: JetStreamContext.PushSubscription, deliver: Callable[[Message], None]
    ) -> None:
        with errors("follow the rooms"):
            async for msg in subscription.messages:
                stream_seq = msg.metadata.sequence.stream
                if stream_seq < self._from:
                    continue  # replayed by a recreated consumer: delivered already
                self._from = stream_seq + 1
                try:
                    stored = self._reader.pushed(msg)
                except StoreError:
                    log.warning(
                        "skipping a message that is not grpcchat's: %s",
                        msg.subject,
                        extra={"event": "foreign_message_skipped", "subject": msg.subject},
                    )
                    continue
                self._saw(stored)
                deliver(stored.message)
