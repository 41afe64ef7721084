"""Reading one JetStream stream of history: the rooms, a room's last message, the next one
after a stream seq, a room's message by seq (a binary search), a range, a run of many, a count.

A room's stream messages have contiguous seqs but for two kinds of gaps: a purged prefix
(retention: expired or beyond the count, never read) and entries a DELETE erased (read from
the DELETE's `gone`, by `RoomState`). `between` yields what the stream holds; the store merges
in the erased entries.

Every method may raise nats-py's errors; callers turn them into StoreError (`connection.errors`).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator

import nats.js.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy, RawStreamMsg

from grpcchat.core.errors import StoreError
from grpcchat.store.nats import codec
from grpcchat.store.nats.codec import Stored
from grpcchat.store.nats.connection import NATS_ERRORS, REQUEST_TIMEOUT

# A run of more entries than this is read through a consumer (JetStream pushes them) rather
# than a request each: making the consumer costs a few requests (in a cluster, a round through
# its meta leader), so it pays off only for a run longer than that.
FEW = 32


class Reader:
    """Lookups in the stream `stream`, whose rooms' subjects start with `prefix`."""

    def __init__(
        self, js: JetStreamContext, stream: str, prefix: str, epoch: str, max_messages: int
    ) -> None:
        self._js = js
        self.stream = stream
        self._prefix = prefix
        self._epoch = epoch
        self._max_messages = max_messages

    def subject(self, room: str) -> str:
        return self._prefix + codec.room_token(room)

    def decode(self, raw: RawStreamMsg) -> Stored:
        return codec.decode(
            raw.data or b"", dict(raw.headers or {}), raw.seq or 0, raw.time, self._epoch
        )

    def pushed(self, msg: Msg) -> Stored:
        """A message a consumer delivered."""
        metadata = msg.metadata
        return codec.decode(
            msg.data,
            dict(msg.headers or {}),
            metadata.sequence.stream,
            metadata.timestamp,
            self._epoch,
        )

    async def rooms(self) -> list[str]:
        """The rooms the stream holds messages of, in no order."""
        info = await self._js.stream_info(self.stream, subjects_filter=f"{self._prefix}>")
        return [codec.room_of(subject, self._prefix) for subject in info.state.subjects or {}]

    async def get(self, stream_seq: int, *, fresh: bool = False) -> Stored | None:
        """The message at `stream_seq` (see `last` for `fresh`)."""
        try:
            raw = await self._js.get_msg(self.stream, seq=stream_seq, direct=not fresh)
        except nats.js.errors.NotFoundError:
            return None
        return self.decode(raw)

    async def last(self, subject: str, *, fresh: bool = False) -> Stored | None:
        """The subject's last message. A direct get, which any replica may answer and which so
        may lag the leader by a moment; `fresh` asks the stream's leader, which has every
        acknowledged append (what an append must judge itself against after a conflict)."""
        try:
            raw = await self._js.get_last_msg(self.stream, subject, direct=not fresh)
        except nats.js.errors.NotFoundError:
            return None
        return self.decode(raw)

    async def next(self, subject: str, stream_seq: int) -> Stored | None:
        """The room's first message at or after `stream_seq`."""
        try:
            raw = await self._js.get_msg(
                self.stream, seq=max(stream_seq, 1), subject=subject, next=True, direct=True
            )
        except nats.js.errors.NotFoundError:
            return None
        return self.decode(raw)

    async def seek(self, subject: str, seq: int, last: Stored) -> Stored:
        """The room's first message held with a seq of at least `seq` (at most `last.seq`):
        a binary search over stream seqs, since a room's seqs grow with them."""
        if seq >= last.seq:
            return last
        best = await self.next(subject, 1)
        if best is None or best.seq >= seq:
            return best or last
        low, high, best = best.stream_seq + 1, last.stream_seq, last
        while low <= high:
            middle = (low + high) // 2
            found = await self.next(subject, middle)
            if found is None or found.stream_seq > last.stream_seq:
                high = middle - 1
            elif found.seq >= seq:
                best = found if found.seq < best.seq else best
                if found.seq == seq:
                    return found
                high = middle - 1
            else:
                low = found.stream_seq + 1
        return best

    async def between(
        self, subject: str, last: Stored, low: int, high: int
    ) -> AsyncIterator[Stored]:
        """The room's messages held with `low < seq < high`, oldest first, up to `last`."""
        if high - low <= 1:
            return
        current: Stored | None = await self.seek(subject, low + 1, last)
        while current is not None and current.seq < high:
            yield current
            if current.stream_seq >= last.stream_seq:
                return
            current = await self.next(subject, current.stream_seq + 1)

    async def run(
        self, subject: str, stream_seq: int, last: Stored, expected: int
    ) -> AsyncGenerator[Stored, None]:
        """The room's messages from `stream_seq` on, oldest first, up to `last`; `expected` is
        about how many that is: for more than FEW, one ordered consumer on the room's subject
        delivers them (JetStream pushes them under its flow control) instead of a request each.
        Meant for `contextlib.aclosing`: the consumer is unsubscribed when the run is closed."""
        if expected <= FEW:
            current = await self.next(subject, stream_seq)
            while current is not None and current.stream_seq <= last.stream_seq:
                yield current
                if current.stream_seq == last.stream_seq:
                    return
                current = await self.next(subject, current.stream_seq + 1)
            return
        subscription = await self._js.subscribe(
            subject,
            stream=self.stream,
            ordered_consumer=True,
            config=ConsumerConfig(
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=stream_seq
            ),
        )
        try:
            while True:
                msg = await subscription.next_msg(timeout=REQUEST_TIMEOUT)
                stored = self.pushed(msg)
                if stored.stream_seq > last.stream_seq:
                    return
                yield stored
                if stored.stream_seq == last.stream_seq or not msg.metadata.num_pending:
                    return
        finally:
            with contextlib.suppress(*NATS_ERRORS):
                await subscription.unsubscribe()

    async def count(self, room: str, oldest_kept: int) -> int | None:
        """How many entries `read` would return for the room, given the oldest time kept; None
        when erased entries (see `codec.Gone`) make that unknowable from the stream alone: a
        run of two or more of them where the retained entries start, or among the late ones no
        longer listed. The room's `RoomState` knows then."""
        subject = self.subject(room)
        last = await self.last(subject)
        if last is None or last.latest_us < oldest_kept:
            return 0  # every message is older than the newest, which has expired
        window_start = max(last.seq - self._max_messages + 1, 1)
        current = await self.seek(subject, window_start, last)
        # Missing before `current`: purged (and so expired) or erased. An erased entry right
        # before it is fresh if the latest up to it is; one is counted, more are unknowable.
        start = current.seq
        if current.seq > window_start and _fresh_before(current, oldest_kept):
            if current.seq - 1 > window_start:
                return None
            start -= 1
        held = last.seq - start + 1
        # The expired prefix: nothing up to the first message with a fresh `latest` is fresh.
        expired = 0
        while current.latest_us < oldest_kept:
            expired += 1
            following = await self.next(subject, current.stream_seq + 1)
            if following is None:
                raise StoreError(f"the history of {room!r} changed while being counted")
            missing = following.seq - current.seq - 1  # erased between the two
            if missing and _fresh_before(following, oldest_kept):
                if missing > 1:
                    return None
            else:
                expired += missing
            current = following
        fresh_from = current.seq
        lates = last.lates
        expired += sum(
            1
            for seq, sent_us in lates.listed
            if seq >= fresh_from and seq > lates.unknown_upto and sent_us < oldest_kept
        )
        while current.seq <= lates.unknown_upto:  # lates no longer listed: read them
            expired += current.sent_us < oldest_kept
            following = await self.next(subject, current.stream_seq + 1)
            if following is None:
                break
            if following.seq != current.seq + 1:
                return None  # an erased late one may have expired
            current = following
        return held - expired


def _fresh_before(stored: Stored, oldest_kept: int) -> bool:
    """Whether the entry before `stored` has a fresh `latest` (False if it is not known: stored
    before `before_us` existed, when nothing was ever erased)."""
    return stored.before_us is not None and stored.before_us >= oldest_kept
