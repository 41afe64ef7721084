"""`Appender`: appends to the stream with contiguous seqs across servers, idempotency keys,
and relations validated against the room's state as of the seq they take (the design is in
this package's docstring: "Contiguous seqs", "Idempotency", "Conversations")."""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections import OrderedDict
from dataclasses import replace

import nats.js.errors
from nats.js import JetStreamContext

from grpcchat.core.errors import StoreError
from grpcchat.core.history import Appended
from grpcchat.core.models import Message
from grpcchat.store.nats import codec
from grpcchat.store.nats.codec import Gone, Lates, Stored
from grpcchat.store.nats.connection import Link
from grpcchat.store.nats.erasure import Eraser
from grpcchat.store.nats.indexes import Indexes
from grpcchat.store.nats.maintenance import Maintenance
from grpcchat.store.nats.reader import Reader
from grpcchat.store.nats.state import RoomState
from grpcchat.store.nats.validation import REFUSALS, validate
from grpcchat.store.nats.window import Window

PUBLISH_ATTEMPTS = 20
# Seconds: after its second lost race, an append pauses up to this much per race lost (10 at most).
CONFLICT_PAUSE = 0.002
# Rooms whose last message this process keeps as a hint; past that, the room appended to (or
# seen) least recently is forgotten, and read from the stream at its next append. Anyone can
# make rooms by posting: without a bound, every room ever posted to stayed here, text and all.
MAX_HEADS = 4096
# A key no message has: the engine's are hex digits (and "#").
_NO_KEY = "grpcchat: no message has this key"


class _Heads(OrderedDict[str, Stored | None]):
    """Each room's last message as this process last saw it, the MAX_HEADS most recent."""

    def __setitem__(self, room: str, stored: Stored | None) -> None:
        super().__setitem__(room, stored)
        self.move_to_end(room)
        if len(self) > MAX_HEADS:
            self.popitem(last=False)


class Appender:
    def __init__(
        self,
        js: JetStreamContext,
        link: Link,
        reader: Reader,
        window: Window,
        indexes: Indexes,
        eraser: Eraser,
        maintenance: Maintenance,
    ) -> None:
        self._js = js
        self._link = link
        self._reader = reader
        self._window = window
        self._indexes = indexes
        self._eraser = eraser
        self._maintenance = maintenance
        # Each room's latest append in this process: the next one waits for it.
        self.tails: dict[str, asyncio.Task[Appended]] = {}
        # Each room's last message as this process last saw it (a hint: JetStream checks it).
        self._heads = _Heads()

    async def append(self, draft: Message, key: str) -> Appended:
        """Take the room's next place in line now (before suspending), publish once the appends
        before it in this process are done; a caller cancelled meanwhile does not take its
        append back."""
        room = draft.room
        before = self.tails.get(room)
        task = asyncio.get_running_loop().create_task(self._append_after(before, draft, key))
        self.tails[room] = task
        task.add_done_callback(lambda done: self._untail(room, done))
        return await asyncio.shield(task)

    def saw(self, stored: Stored) -> None:
        """An entry the feed delivered: if another process appended it, the next append here
        expects it, saving the refused publish and the re-read a stale hint would cost."""
        room = stored.message.room
        head = self._heads.get(room)
        if head is not None and head.stream_seq < stored.stream_seq:
            self._heads[room] = stored

    def _untail(self, room: str, done: asyncio.Task[Appended]) -> None:
        if self.tails.get(room) is done:
            del self.tails[room]
        if not done.cancelled():
            done.exception()  # retrieved: a caller that went away cannot warn about it

    async def _append_after(
        self, before: asyncio.Task[Appended] | None, draft: Message, key: str
    ) -> Appended:
        if before is not None:
            await asyncio.wait([before])
        self._link.check_open()
        try:
            with self._link.request(f"append to #{draft.room}"):
                return await self._append(draft, key)
        except REFUSALS:
            raise
        except BaseException:
            self._heads.pop(draft.room, None)  # re-read the room next time
            raise

    async def _append(self, draft: Message, key: str) -> Appended:
        subject = self._reader.subject(draft.room)
        sent_us = codec.to_us(draft.sent_at)
        msg_id = hashlib.sha256(f"{draft.sender}\0{key}".encode()).hexdigest() if key else ""
        if draft.room in self._heads:
            head = self._heads[draft.room]
        else:
            head = await self._reader.last(subject)
        changes = draft.relation is not None or bool(draft.reply_to)
        for attempt in range(PUBLISH_ATTEMPTS):
            gone: Gone | None = None
            state = self._indexes.peek(draft.room)
            if changes:
                # Judged against the room as of `head`, the entry this one must follow: if
                # another append comes first, the publish is refused and this runs again.
                state = await self._indexes.upto(draft.room, head)
                if state.last is not None and (head is None or state.last.seq > head.seq):
                    head = state.last  # the index saw more than the hint
                try:
                    gone = validate(state, draft, head, self._window)
                except REFUSALS:
                    repeated = await self._repeated(state, msg_id, sent_us)
                    if repeated is None:
                        repeated = await self._repeated_elsewhere(draft.room, msg_id, sent_us)
                    if repeated is not None:
                        return Appended(repeated, duplicate=True)
                    # Refused as of what this process last saw: a target appended through
                    # another server a moment ago is newer. Judged again against the stream's
                    # own last entry before the refusal stands.
                    newest = await self._reader.last(subject, fresh=True)
                    if newest is not None and (head is None or newest.stream_seq > head.stream_seq):
                        head = self._heads[draft.room] = newest
                        continue
                    raise
            seq = head.seq + 1 if head else 1
            latest = max(head.latest_us, sent_us) if head else sent_us
            lates = (head.lates if head else Lates()).after(
                seq,
                sent_us,
                late=head is not None and sent_us < head.latest_us,
                window_start=self._window.start(seq),
            )
            before = head.latest_us if head else None
            message = replace(draft, seq=seq)
            payload, headers = codec.encode(
                message, sent_us, latest, lates, bool(key), before, gone
            )
            headers[codec.EXPECTED_LAST] = str(head.stream_seq if head else 0)
            if msg_id:
                headers[codec.MSG_ID] = msg_id
            try:
                ack = await self._js.publish(subject, payload, headers=headers)
            except TimeoutError:
                # Unanswered: it may be stored all the same. If it is, it is ours to return.
                # Without a connection that cannot be asked (a retry with the key can).
                self._link.check_connected(f"learn whether #{draft.room} got the message")
                head = await self._reader.last(subject, fresh=True)
                if head is not None and head.message.id == draft.id:
                    self._heads[draft.room] = head
                    await self._eraser.erase(head.gone)
                    return Appended(head.message, duplicate=False)
                raise
            except nats.js.errors.BadRequestError as exc:
                if exc.err_code != codec.WRONG_LAST_SEQUENCE:
                    raise
                # Someone appended meanwhile (or our own earlier attempt got through).
                head = self._heads[draft.room] = await self._reader.last(subject, fresh=True)
                if head is not None and head.message.id == draft.id:
                    await self._eraser.erase(head.gone)
                    return Appended(head.message, duplicate=False)
                if attempt:
                    # Lost twice running: the winner, which knows the new head already, may
                    # win every race. A short random pause lets the losers through.
                    await asyncio.sleep(random.uniform(0, CONFLICT_PAUSE * min(attempt, 10)))
                continue
            if ack.duplicate:
                original = await self._original(draft.room, ack.seq)
                if original is not None and sent_us - codec.to_us(original.sent_at) < (
                    self._window.dedup_us
                ):
                    return Appended(original, duplicate=True)
                # Outside our window (or gone): a new message, under a new id.
                msg_id = f"{msg_id.partition('#')[0]}#{ack.seq}"
                continue
            stored = Stored(
                message, ack.seq, sent_us, sent_us, latest, lates, bool(key), before, msg_id, gone
            )
            self._heads[draft.room] = stored
            if state is not None and _stream_seq(state.last) == _stream_seq(head):
                state.apply(stored)  # it follows what the index holds: no need to read it
            if seq > self._window.max_messages or sent_us < self._window.oldest_kept_us():
                self._maintenance.soon(draft.room)
            await self._eraser.erase(gone)
            return Appended(message, duplicate=False)
        raise StoreError(f"too many concurrent appends to #{draft.room}: try again")

    async def _repeated(self, state: RoomState, msg_id: str, sent_us: int) -> Message | None:
        """The entry a refused append repeats (same sender and key, within the window) in the
        room's index, as it is now: the key check comes before any other."""
        found = state.keyed(msg_id.partition("#")[0]) if msg_id else None
        if found is None:
            return None
        seq, stream_seq = found
        original = await self._reader.get(stream_seq)
        message = self._as_now(state, original.message) if original else state.shown(seq)
        if sent_us - codec.to_us(message.sent_at) >= self._window.dedup_us:
            return None
        return message

    async def _repeated_elsewhere(self, room: str, msg_id: str, sent_us: int) -> Message | None:
        """The entry a refused append to `room` repeats when the room's index does not know
        its key (a key is the sender's, whatever room the retry names; an index rebuilt after
        a delete knows the erased edits but not their keys), as it is now. Asked of
        JetStream's own dedup, stream-wide: with a publish that expects a last key no message
        has, which JetStream answers as a duplicate if it knows the key and refuses otherwise,
        so nothing is ever stored by it."""
        if not msg_id:
            return None
        headers = {codec.MSG_ID: msg_id.partition("#")[0], codec.EXPECTED_LAST_MSG_ID: _NO_KEY}
        try:
            ack = await self._js.publish(self._reader.subject(room), b"", headers=headers)
        except nats.js.errors.BadRequestError as exc:
            if exc.err_code == codec.WRONG_LAST_MSG_ID:
                return None  # the key is not known: the refusal stands
            raise
        if not ack.duplicate:  # cannot be: no message has that key
            raise StoreError(f"NATS stored a probe for a repeated key at {ack.seq}")
        # Erased from another room than the retry names, it is not found: the refusal stands.
        original = await self._original(room, ack.seq)
        if original is None or sent_us - codec.to_us(original.sent_at) >= self._window.dedup_us:
            return None
        return original

    async def _original(self, room: str, stream_seq: int) -> Message | None:
        """The entry JetStream says an append repeats, as it is now (None if it is gone): its
        room's index is brought up to date (built if need be: repeats are rare) for that. Asked
        of the leader: JetStream has just said the entry is there, a replica may not have it."""
        original = await self._reader.get(stream_seq, fresh=True)
        if original is not None:
            subject = self._reader.subject(original.message.room)
            state = await self._indexes.upto(
                original.message.room, await self._reader.last(subject, fresh=True)
            )
            return self._as_now(state, original.message)
        # Erased by a DELETE (or pruned): a tombstone is what the room's index shows then.
        last = await self._reader.last(self._reader.subject(room), fresh=True)
        state = await self._indexes.upto(room, last)
        return state.erased_stream_seq(stream_seq)

    def _as_now(self, state: RoomState, stored: Message) -> Message:
        """A stored entry as a repeat returns it: as it is now while retention keeps it, as it
        was stored once retention has removed it (still in the stream until maintenance runs),
        which is what the other engines' copy of a key holds then."""
        if stored.relation is None and state.last is not None:
            window_start = self._window.start(state.last.seq)
            if state.target(stored.id, window_start, self._window.oldest_kept_us()) is None:
                return stored
        return state.current(stored)


def _stream_seq(stored: Stored | None) -> int:
    return stored.stream_seq if stored else 0
