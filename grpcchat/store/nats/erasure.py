"""`Eraser`: erasing from the stream the messages a DELETE removed (the target and its edits).

JetStream overwrites a message it deletes (STREAM.MSG.DELETE erases by default). The DELETE is
stored before its targets are erased, so an erasing that fails is not the append's failure:
the stream seqs stay owed and the maintenance job tries again (woken through `wake`); a read
that still finds such a message owes it again (`later`).
"""

from __future__ import annotations

import asyncio
import logging

import nats.js.errors
from nats.js import JetStreamContext

from grpcchat.store.nats import codec
from grpcchat.store.nats.codec import Gone
from grpcchat.store.nats.connection import NATS_ERRORS

log = logging.getLogger("grpcchat.store")
# What a failed prune or erasure logs: the same event as the SQLite store's maintenance.
MAINTENANCE_FAILED = {"event": "history_maintenance_failed"}


class Eraser:
    def __init__(self, js: JetStreamContext, stream: str, wake: asyncio.Event) -> None:
        self._js = js
        self._stream = stream
        self._wake = wake
        # Stream seqs of entries a DELETE erased whose erasing has not succeeded yet.
        self.owed: set[int] = set()

    async def erase(self, gone: Gone | None) -> None:
        """Erase what a DELETE removed; a failure is retried later, not raised."""
        if gone is None:
            return
        for stream_seq in (gone.target.stream_seq, *(edit.stream_seq for edit in gone.edits)):
            self.owed.add(stream_seq)
        await self.flush()

    def later(self, stream_seq: int) -> None:
        """Have the maintenance job erase this stream message (a read found it still there)."""
        self.owed.add(stream_seq)
        self._wake.set()

    async def flush(self) -> None:
        """Erase what is owed, oldest first, until done or NATS fails (then wake the
        maintenance job to try again)."""
        while self.owed:
            stream_seq = min(self.owed)
            try:
                await self._js.delete_msg(self._stream, stream_seq)
            except nats.js.errors.APIError as exc:
                if exc.err_code != codec.NO_MESSAGE_FOUND:
                    log.warning(
                        "erasing a deleted message failed (retrying): %s",
                        exc,
                        extra=MAINTENANCE_FAILED,
                    )
                    self._wake.set()
                    return
                # Erased already (by another process, or before a retry), or pruned.
            except NATS_ERRORS as exc:
                log.warning(
                    "erasing a deleted message failed (retrying): %s", exc, extra=MAINTENANCE_FAILED
                )
                self._wake.set()
                return
            self.owed.discard(stream_seq)
