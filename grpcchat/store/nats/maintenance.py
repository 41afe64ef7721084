"""`Maintenance`: the engine's retention (see "Retention" in the package docstring: it purges
each room's prefix nothing needs any more) and the erasing owed (`erasure`), one background
job per store. Every room is pruned at open and every MAINTENANCE_INTERVAL, and a room an
append pushed past its count PRUNE_DELAY after; failures are logged, and retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime

from nats.js import JetStreamContext

from grpcchat.core.errors import StoreError
from grpcchat.store.nats import codec
from grpcchat.store.nats.connection import errors
from grpcchat.store.nats.erasure import MAINTENANCE_FAILED, Eraser
from grpcchat.store.nats.reader import Reader
from grpcchat.store.nats.window import Window

log = logging.getLogger("grpcchat.store")

MAINTENANCE_INTERVAL = 60.0
# How long after an append pushes a room past its count its prefix is purged.
PRUNE_DELAY = 1.0


class Maintenance:
    def __init__(
        self,
        js: JetStreamContext,
        reader: Reader,
        window: Window,
        eraser: Eraser,
        wake: asyncio.Event,
    ) -> None:
        self._js = js
        self._reader = reader
        self._window = window
        self._eraser = eraser
        self._wake = wake
        self._dirty: set[str] = set()
        self._closed = False
        self.task = asyncio.get_running_loop().create_task(
            self._run(), name=f"grpcchat-store-maintenance {reader.stream}"
        )

    def soon(self, room: str) -> None:
        """Prune the room PRUNE_DELAY from now (an append pushed it past what it keeps)."""
        self._dirty.add(room)
        self._wake.set()

    def close(self) -> None:
        self._closed = True
        self.task.cancel()

    async def prune(self, room: str) -> None:
        """Purge the room's prefix nothing needs. Raises StoreError if NATS fails."""
        with errors(f"delete old history of #{room}"):
            subject = self._reader.subject(room)
            last = await self._reader.last(subject)
            if last is None:
                return
            now_us = codec.to_us(datetime.now(UTC))
            oldest_kept = now_us - self._window.max_age_us
            window_start = self._window.start(last.seq)
            first = current = await self._reader.next(subject, 1)
            while current is not None and current.seq < last.seq:
                if current.seq >= window_start and current.latest_us >= oldest_kept:
                    break
                if (
                    current.keyed
                    and now_us < max(current.sent_us, current.stored_us) + self._window.dedup_us
                ):
                    break
                current = await self._reader.next(subject, current.stream_seq + 1)
            if current is not None and first is not None and current.seq > first.seq:
                await self._js.purge_stream(
                    self._reader.stream, seq=current.stream_seq, subject=subject
                )

    async def maintain(self) -> None:
        """Prune every room; raises StoreError at the first room NATS fails on."""
        with errors("list the rooms"):
            rooms = await self._reader.rooms()
        for room in rooms:
            await self.prune(room)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        sweep_at = loop.time()
        while not self._closed:
            try:
                if loop.time() >= sweep_at:
                    sweep_at = loop.time() + MAINTENANCE_INTERVAL
                    self._dirty.clear()
                    await self.maintain()
                while self._dirty:
                    await self.prune(self._dirty.pop())
                await self._eraser.flush()
            except StoreError as exc:
                log.warning(
                    "deleting old history failed (retrying): %s", exc, extra=MAINTENANCE_FAILED
                )
            except Exception:
                log.exception("deleting old history failed (retrying)", extra=MAINTENANCE_FAILED)
            self._wake.clear()
            if self._eraser.owed:
                self._wake.set()  # erasing failed: try again after PRUNE_DELAY
            # nats-py waits for replies with asyncio.wait_for, which on Python 3.11 can swallow
            # the cancellation `close` sends: so it also says so in `_closed`, checked here.
            if self._closed:
                return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(sweep_at):
                    await self._wake.wait()
            await asyncio.sleep(PRUNE_DELAY)
