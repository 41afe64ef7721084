"""`NatsStore`: the HistoryStore contract on JetStream (the design is in this package's
docstring)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy, StorageType, StreamConfig

from grpcchat.core import relations
from grpcchat.core.cluster import LocalNode, MemberChange
from grpcchat.core.errors import (
    AlreadyExists,
    InvalidInput,
    LimitExceeded,
    NotFound,
    PermissionDenied,
    StoreError,
)
from grpcchat.core.history import MAX_UNREAD, Appended, Retention, RoomCount
from grpcchat.core.models import Message, Relation, RelationKind
from grpcchat.core.urls import redacted_url
from grpcchat.store.nats import codec
from grpcchat.store.nats.cluster import NatsCluster
from grpcchat.store.nats.codec import Gone, Lates, Options, Stored
from grpcchat.store.nats.markers import Markers
from grpcchat.store.nats.reader import Reader
from grpcchat.store.nats.state import RoomState, RoomStates

log = logging.getLogger("grpcchat.store")

CONNECT_TIMEOUT = 5.0
REQUEST_TIMEOUT = 5.0
# How long `aclose` waits for the appends under way (each request is bounded too).
CLOSE_TIMEOUT = 2 * REQUEST_TIMEOUT
PUBLISH_ATTEMPTS = 20
MAINTENANCE_INTERVAL = 60.0
# How long after an append pushes a room past its count its prefix is purged.
PRUNE_DELAY = 1.0
EPOCH_KEY = "grpcchat-epoch"
WRONG_LAST_SEQUENCE = 10071
NO_MESSAGE_FOUND = 10057
# The feed's consumer sends a heartbeat this often when idle; nats-py recreates it (from the
# last stream seq delivered) after two missed ones, or when a delivery is missing.
FEED_HEARTBEAT = 2.0
# A connection whose server stops answering (no TCP reset: a partition) is given up after
# this many seconds without a PONG, times two, and reconnected.
PING_INTERVAL = 5
NATS_ERRORS = (nats.errors.Error, TimeoutError, OSError)
# What a relation or reply may be refused with (the store's validation, see the contract).
REFUSALS = (NotFound, PermissionDenied, AlreadyExists, LimitExceeded, InvalidInput)


@contextlib.contextmanager
def _errors(doing: str) -> Iterator[None]:
    """NATS failures as StoreError, naming what failed."""
    try:
        yield
    except nats.js.errors.APIError as exc:
        raise StoreError(f"NATS refused to {doing}: {exc.description or exc}") from None
    except NATS_ERRORS as exc:
        reason = str(exc) or type(exc).__name__
        raise StoreError(f"could not {doing} on NATS: {reason}") from None


class _Link:
    """The connection as nats-py reports it (its callbacks): `up` while connected, `down`
    while not (reconnecting, or closed)."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.up = asyncio.Event()
        self.down = asyncio.Event()
        # Set by `aclose`: the connection ending then is no news worth a warning.
        self.closing = False

    async def connected(self) -> None:
        self.down.clear()
        self.up.set()

    async def reconnected(self) -> None:
        log.warning("reconnected to NATS (%s)", self.where, extra={"event": "nats_reconnected"})
        await self.connected()

    async def disconnected(self) -> None:
        if self.up.is_set() and not self.closing:
            log.warning(
                "lost the connection to NATS (%s): reconnecting",
                self.where,
                extra={"event": "nats_disconnected"},
            )
        self.up.clear()
        self.down.set()


class NatsStore:
    """The `HistoryStore` contract on a JetStream stream."""

    def __init__(
        self,
        nc: Client,
        options: Options,
        retention: Retention,
        epoch: str,
        link: _Link | None = None,
    ) -> None:
        self._nc = nc
        if link is None:
            link = _Link(", ".join(redacted_url(server) for server in options.servers))
            link.up.set()
        self._link = link
        self._js: JetStreamContext = nc.jetstream(timeout=REQUEST_TIMEOUT)
        self._stream = options.stream
        self._prefix = options.prefix
        self._retention = retention
        self._window_us = codec.to_us(codec.from_us(0) + retention.dedup_window)
        self._max_age_us = codec.to_us(codec.from_us(0) + retention.max_age)
        self._epoch = epoch
        self._reader = Reader(
            self._js, options.stream, options.prefix, epoch, retention.max_messages
        )
        self._markers = Markers(self._js, options.stream, epoch)
        self._states = RoomStates(epoch, retention.max_messages)
        # Stream seqs of entries a DELETE erased whose erasing failed: retried by maintenance.
        self._unerased: set[int] = set()
        self._closed = False
        self._cluster = NatsCluster(nc, options.stream)
        # Each room's latest append in this process: the next one waits for it.
        self._tails: dict[str, asyncio.Task[Appended]] = {}
        # Each room's last message as this process last saw it (a hint: JetStream checks it).
        self._heads: dict[str, Stored | None] = {}
        self._dirty: set[str] = set()
        # The stream seq the feed continues from (set by its first `follow`).
        self._feed_from = 0
        self._wake = asyncio.Event()
        self._maintenance = asyncio.get_running_loop().create_task(
            self._maintain_forever(), name=f"grpcchat-store-maintenance {self._stream}"
        )

    @classmethod
    async def open(cls, url: str, retention: Retention) -> NatsStore:
        """Connect to the NATS servers of `url` and open (creating it if missing) its stream.
        Raises StoreError, naming the servers, if NATS cannot be reached or refuses."""
        options = codec.parse_url(url)
        where = ", ".join(redacted_url(server) for server in options.servers)

        link = _Link(where)

        async def report(exc: Exception) -> None:
            log.warning("NATS connection problem (%s): %s", where, exc or type(exc).__name__)

        try:
            # Bounded here: nats-py retries the first connection for as long as it reconnects.
            async with asyncio.timeout(CONNECT_TIMEOUT):
                nc = await nats.connect(
                    options.servers,
                    error_cb=report,
                    disconnected_cb=link.disconnected,
                    reconnected_cb=link.reconnected,
                    closed_cb=link.disconnected,
                    connect_timeout=int(CONNECT_TIMEOUT),
                    max_reconnect_attempts=-1,
                    ping_interval=PING_INTERVAL,
                )
        except TimeoutError:
            raise StoreError(f"cannot reach NATS at {where} within {CONNECT_TIMEOUT:g}s") from None
        except NATS_ERRORS as exc:
            raise StoreError(f"cannot reach NATS at {where}: {exc or type(exc).__name__}") from None
        try:
            with _errors(f"open the stream {options.stream}"):
                js = nc.jetstream(timeout=REQUEST_TIMEOUT)
                epoch = await _open_stream(js, options, retention)
                await Markers(js, options.stream, epoch).open(options.replicas)
        except BaseException:
            await nc.close()
            raise
        await link.connected()
        return cls(nc, options, retention, epoch, link)

    @property
    def connected(self) -> bool:
        """Whether the connection to NATS is up right now (it reconnects by itself)."""
        return bool(self._nc.is_connected)

    def _check_connected(self, doing: str) -> None:
        """Fail fast while reconnecting: nats-py would hold the request until its timeout."""
        if not self._link.up.is_set():
            raise StoreError(f"could not {doing}: no connection to NATS ({self._link.where})")

    @property
    def epoch(self) -> str:
        return self._epoch

    async def append(
        self,
        *,
        id: str,
        room: str,
        sender: str,
        text: str,
        sent_at: datetime,
        key: str = "",
        action: bool = False,
        reply_to: str = "",
        relation: Relation | None = None,
    ) -> Appended:
        """Take the room's next place in line now (before suspending), publish once the appends
        before it in this process are done; a caller cancelled meanwhile does not take its
        append back."""
        self._check_open()
        sent_us = codec.to_us(sent_at)
        draft = Message(
            id,
            room,
            sender,
            text,
            codec.from_us(sent_us),
            0,
            self._epoch,
            "",
            action,
            reply_to=reply_to,
            relation=relation,
        )
        before = self._tails.get(room)
        task = asyncio.get_running_loop().create_task(self._append_after(before, draft, key))
        self._tails[room] = task
        task.add_done_callback(lambda done: self._untail(room, done))
        return await asyncio.shield(task)

    async def read(
        self,
        room: str,
        *,
        after: int | None = None,
        before: int | None = None,
        limit: int = 100,
        newest_first: bool = False,
    ) -> list[Message]:
        self._check_open()
        if limit <= 0:
            return []
        with _errors(f"read the history of {room!r}"):
            subject = self._reader.subject(room)
            last = await self._reader.last(subject)
            if last is None:
                return []
            state = await self._state(room, last)
            low = max(after if after is not None else 0, last.seq - self._retention.max_messages)
            high = min(before if before is not None else last.seq + 1, last.seq + 1)
            if not newest_first:
                page: list[Message] = []
                async for message in self._entries(state, last, low, high):
                    page.append(message)
                    if len(page) == limit:
                        break
                return page
            # Newest first: read forward a chunk just below `high`, then the one below it, ...
            newest: list[Message] = []
            while len(newest) < limit and high - low > 1:
                start = max(low, high - 1 - (limit - len(newest)))
                chunk = [message async for message in self._entries(state, last, start, high)]
                newest += chunk[::-1][: limit - len(newest)]
                high = start + 1
            return newest

    async def _entries(
        self, state: RoomState, last: Stored, low: int, high: int
    ) -> AsyncIterator[Message]:
        """The room's retained entries with `low < seq < high`, oldest first, as they are now:
        the stream's, and the erased ones rebuilt from their DELETE."""
        oldest_kept = self._oldest_kept_us()
        erased = state.erased_between(low, high)
        gone = 0
        subject = self._reader.subject(state.room)
        async for stored in self._reader.between(subject, last, low, high):
            while gone < len(erased) and erased[gone].seq < stored.seq:
                if codec.to_us(erased[gone].sent_at) >= oldest_kept:
                    yield erased[gone]
                gone += 1
            if gone < len(erased) and erased[gone].seq == stored.seq:
                gone += 1
                self._erase_later(stored.stream_seq)  # its erasing failed, or is under way
            if stored.sent_us >= oldest_kept:
                yield state.current(stored.message)
        for message in erased[gone:]:
            if codec.to_us(message.sent_at) >= oldest_kept:
                yield message

    async def _state(self, room: str, upto: Stored | None) -> RoomState:
        """The room's index, brought up to the entry `upto` (the room's last, or a later one)
        at least: read from the stream, from where it stopped or, when it has none or is too
        far behind, from the retention window on."""
        state = self._states.get(room)
        if upto is None:
            return state
        async with state.lock:
            known = state.last
            if known is not None and known.stream_seq >= upto.stream_seq:
                return state
            subject = self._reader.subject(room)
            window_start = upto.seq - self._retention.max_messages + 1
            current: Stored | None
            if known is None or known.seq < window_start - 1:
                state.reset()
                current = await self._reader.seek(subject, window_start, upto)
            else:
                current = await self._reader.next(subject, known.stream_seq + 1)
            while current is not None and current.stream_seq <= upto.stream_seq:
                state.apply(current)
                if current.stream_seq == upto.stream_seq:
                    break
                current = await self._reader.next(subject, current.stream_seq + 1)
        return state

    async def last_seq(self, room: str) -> int:
        self._check_open()
        with _errors(f"read the last seq of {room!r}"):
            last = await self._reader.last(self._reader.subject(room))
        return last.seq if last else 0

    async def rooms(self, *, after: str = "", limit: int = 100) -> list[RoomCount]:
        self._check_open()
        if limit <= 0:
            return []
        with _errors("list the rooms"):
            info = await self._js.stream_info(self._stream, subjects_filter=f"{self._prefix}>")
            names = sorted(
                name
                for name in (codec.room_of(s, self._prefix) for s in info.state.subjects or {})
                if name > after
            )
            page: list[RoomCount] = []
            for name in names:
                count = await self._count(name)
                if count:
                    page.append(RoomCount(name, count))
                    if len(page) == limit:
                        break
            return page

    async def _count(self, room: str) -> int:
        """How many entries `read` would return for the room: from the stream's headers, or,
        when erased entries hide that, from the room's index."""
        oldest_kept = self._oldest_kept_us()
        count = await self._reader.count(room, oldest_kept)
        if count is not None:
            return count
        last = await self._reader.last(self._reader.subject(room))
        if last is None:
            return 0
        state = await self._state(room, last)
        return state.count(last.seq - self._retention.max_messages + 1, oldest_kept)

    # -- read markers (see `markers`) ----------------------------------------------------------

    async def mark_read(self, user: str, room: str, seq: int) -> int:
        self._check_open()
        with _errors(f"move {user!r}'s read marker in {room!r}"):
            last = await self._reader.last(self._reader.subject(room))
            return await self._markers.advance(user, room, min(seq, last.seq if last else 0))

    async def read_marker(self, user: str, room: str) -> int:
        self._check_open()
        with _errors(f"read {user!r}'s read marker in {room!r}"):
            marker, _ = await self._markers.get(user, room)
        return marker

    async def unread(self, user: str, rooms: list[str]) -> dict[str, int]:
        """Counted in each room's index (built if need be: a read of the retained room), from
        the newest entry back to the marker, stopping at MAX_UNREAD."""
        self._check_open()
        counts: dict[str, int] = {}
        for room in dict.fromkeys(rooms):
            with _errors(f"count what {user!r} has not read in {room!r}"):
                marker, _ = await self._markers.get(user, room)
                last = await self._reader.last(self._reader.subject(room))
                if last is None or last.seq <= marker:
                    counts[room] = 0
                    continue
                state = await self._state(room, last)
                counts[room] = state.unread(
                    user,
                    marker,
                    last.seq - self._retention.max_messages + 1,
                    self._oldest_kept_us(),
                    MAX_UNREAD,
                )
        return counts

    async def aclose(self) -> None:
        """Stop the maintenance job, let the appends under way finish, drain the connection."""
        if self._closed:
            return
        self._closed = True
        self._link.closing = True
        self._maintenance.cancel()
        await self._cluster.close()
        await asyncio.wait([self._maintenance, *self._tails.values()], timeout=CLOSE_TIMEOUT)
        with contextlib.suppress(*NATS_ERRORS):
            async with asyncio.timeout(REQUEST_TIMEOUT):
                await self._nc.drain()
        if not self._nc.is_closed:
            await self._nc.close()

    # -- the Cluster: presence and direct messages across nodes (see `cluster`) --------------

    async def share(self, node: LocalNode) -> None:
        await self._cluster.share(node)

    def announce(self, changes: list[MemberChange]) -> None:
        self._cluster.announce(changes)

    def send_direct(self, message: Message, key: str) -> None:
        self._cluster.send_direct(message, key)

    async def follow(
        self,
        deliver: Callable[[Message], None],
        following: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """The `RoomFeed`: one ordered JetStream consumer over every room's subject (one per
        process, never one per client or room), from the stream's end at the first call, and
        from the last message delivered at the next; `following` is awaited once it is
        subscribed. nats-py's ordered consumer recreates itself after a missed delivery or two
        missed heartbeats; its messages are only ever those JetStream stored (a core
        subscription would also see refused publishes).

        Losing the connection ends it (StoreError) at once: what was appended meanwhile is
        read again by the next call, from the last stream seq delivered. A call made while
        nats-py reconnects waits for it, at most REQUEST_TIMEOUT."""
        self._check_open()
        if not self._link.up.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(REQUEST_TIMEOUT):
                    await self._link.up.wait()
            self._check_connected("follow the rooms")
        with _errors("follow the rooms"):
            if not self._feed_from:
                info = await self._js.stream_info(self._stream)
                self._feed_from = info.state.last_seq + 1
            subscription = await self._js.subscribe(
                f"{self._prefix}>",
                stream=self._stream,
                ordered_consumer=True,
                idle_heartbeat=FEED_HEARTBEAT,
                config=ConsumerConfig(
                    deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                    opt_start_seq=self._feed_from,
                ),
            )
        loop = asyncio.get_running_loop()
        consume = loop.create_task(self._consume(subscription, deliver))
        lost = loop.create_task(self._link.down.wait())
        try:
            if following is not None:
                await following()
            await asyncio.wait([consume, lost], return_when=asyncio.FIRST_COMPLETED)
        finally:
            consume.cancel()
            lost.cancel()
            await asyncio.wait([consume, lost])
            with contextlib.suppress(*NATS_ERRORS):
                await subscription.unsubscribe()
        if self._closed:
            return
        if not consume.cancelled():
            consume.result()  # StoreError, or the subscription ended (the connection closed)
        raise StoreError(f"lost the connection to NATS ({self._link.where})")

    async def _consume(
        self, subscription: JetStreamContext.PushSubscription, deliver: Callable[[Message], None]
    ) -> None:
        with _errors("follow the rooms"):
            async for msg in subscription.messages:
                metadata = msg.metadata
                stream_seq = metadata.sequence.stream
                if stream_seq < self._feed_from:
                    continue  # replayed by a recreated consumer: delivered already
                self._feed_from = stream_seq + 1
                try:
                    stored = codec.decode(
                        msg.data,
                        dict(msg.headers or {}),
                        stream_seq,
                        metadata.timestamp,
                        self._epoch,
                    )
                except StoreError:
                    log.warning("skipping a message that is not grpcchat's: %s", msg.subject)
                    continue
                room = stored.message.room
                head = self._heads.get(room)
                if head is not None and head.stream_seq < stream_seq:
                    # Another process appended: the next append here expects it, saving the
                    # refused publish and the re-read a stale hint would cost.
                    self._heads[room] = stored
                state = self._states.peek(room)
                if state is not None:
                    state.offer(stored)
                deliver(stored.message)

    # -- appends ------------------------------------------------------------------------------

    async def _append_after(
        self, before: asyncio.Task[Appended] | None, draft: Message, key: str
    ) -> Appended:
        if before is not None:
            await asyncio.wait([before])
        self._check_open()
        self._check_connected(f"append to {draft.room!r}")
        try:
            with _errors(f"append to {draft.room!r}"):
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
        for _ in range(PUBLISH_ATTEMPTS):
            gone: Gone | None = None
            state = self._states.peek(draft.room)
            if changes:
                # Judged against the room as of `head`, the entry this one must follow: if
                # another append comes first, the publish is refused and this runs again.
                state = await self._state(draft.room, head)
                if state.last is not None and (head is None or state.last.seq > head.seq):
                    head = state.last  # the index saw more than the hint
                try:
                    gone = self._validate(state, draft, head)
                except REFUSALS:
                    repeated = await self._repeated(state, msg_id, sent_us)
                    if repeated is None:
                        raise
                    return Appended(repeated, duplicate=True)
            seq = head.seq + 1 if head else 1
            latest = max(head.latest_us, sent_us) if head else sent_us
            lates = (head.lates if head else Lates()).after(
                seq,
                sent_us,
                late=head is not None and sent_us < head.latest_us,
                window_start=seq - self._retention.max_messages + 1,
            )
            before = head.latest_us if head else None
            message = replace(draft, seq=seq)
            payload, headers = codec.encode(
                message, sent_us, latest, lates, bool(key), before, gone
            )
            headers["Nats-Expected-Last-Subject-Sequence"] = str(head.stream_seq if head else 0)
            if msg_id:
                headers[codec.MSG_ID] = msg_id
            try:
                ack = await self._js.publish(subject, payload, headers=headers)
            except TimeoutError:
                # Unanswered: it may be stored all the same. If it is, it is ours to return.
                # Without a connection that cannot be asked (a retry with the key can).
                self._check_connected(f"learn whether {draft.room!r} got the message")
                head = await self._reader.last(subject)
                if head is not None and head.message.id == draft.id:
                    self._heads[draft.room] = head
                    await self._erase(head.gone)
                    return Appended(head.message, duplicate=False)
                raise
            except nats.js.errors.BadRequestError as exc:
                if exc.err_code != WRONG_LAST_SEQUENCE:
                    raise
                # Someone appended meanwhile (or our own earlier attempt got through).
                head = self._heads[draft.room] = await self._reader.last(subject)
                if head is not None and head.message.id == draft.id:
                    await self._erase(head.gone)
                    return Appended(head.message, duplicate=False)
                continue
            if ack.duplicate:
                original = await self._original(draft.room, ack.seq)
                if original is not None and sent_us - codec.to_us(original.sent_at) < (
                    self._window_us
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
            if seq > self._retention.max_messages or sent_us < self._oldest_kept_us():
                self._dirty.add(draft.room)
                self._wake.set()
            await self._erase(gone)
            return Appended(message, duplicate=False)
        raise StoreError(f"too many concurrent appends to {draft.room!r}: try again")

    def _validate(self, state: RoomState, draft: Message, head: Stored | None) -> Gone | None:
        """Raise why `draft` may not be appended after `head` (what its target or the message
        it replies to is then); what a DELETE erases."""
        window_start = (head.seq if head else 0) - self._retention.max_messages + 1
        oldest_kept = self._oldest_kept_us()
        room = draft.room
        if draft.reply_to:
            found = state.target(draft.reply_to, window_start, oldest_kept)
            relations.check_target(found, room, draft.reply_to, replying=True)
        relation = draft.relation
        if relation is None:
            return None
        found = state.target(relation.target, window_start, oldest_kept)
        target = relations.check_target(found, room, relation.target)
        relations.check_relation(target, draft.sender, relation, state.edits(relation.target))
        return state.gone(relation.target) if relation.kind is RelationKind.DELETE else None

    async def _repeated(self, state: RoomState, msg_id: str, sent_us: int) -> Message | None:
        """The entry a refused append repeats (same sender and key, within the window) in the
        room's index, as it is now: the key check comes before any other."""
        found = state.keyed(msg_id.partition("#")[0]) if msg_id else None
        if found is None:
            return None
        seq, stream_seq = found
        original = await self._reader.get(stream_seq)
        message = state.current(original.message) if original else state.shown(seq)
        if sent_us - codec.to_us(message.sent_at) >= self._window_us:
            return None
        return message

    async def _original(self, room: str, stream_seq: int) -> Message | None:
        """The entry JetStream says an append repeats, as it is now (None if it is gone)."""
        original = await self._reader.get(stream_seq)
        if original is not None:
            state = self._states.peek(original.message.room)
            return state.current(original.message) if state else original.message
        # Erased by a DELETE (or pruned): a tombstone is what the room's index shows then.
        state = await self._state(room, await self._reader.last(self._reader.subject(room)))
        return state.erased_stream_seq(stream_seq)

    async def _erase(self, gone: Gone | None) -> None:
        """Erase from the stream what a DELETE removed (JetStream overwrites the messages):
        the append is stored already, so a failure is retried by maintenance, not raised."""
        if gone is None:
            return
        for stream_seq in (gone.target.stream_seq, *(edit.stream_seq for edit in gone.edits)):
            self._unerased.add(stream_seq)
        await self._erase_pending()

    def _erase_later(self, stream_seq: int) -> None:
        self._unerased.add(stream_seq)
        self._wake.set()

    async def _erase_pending(self) -> None:
        while self._unerased:
            stream_seq = min(self._unerased)
            try:
                await self._js.delete_msg(self._stream, stream_seq)
            except nats.js.errors.APIError as exc:
                if exc.err_code != NO_MESSAGE_FOUND:
                    log.warning("erasing a deleted message failed (retrying): %s", exc)
                    self._wake.set()
                    return
                # Erased already (by another process, or before a retry), or pruned.
            except NATS_ERRORS as exc:
                log.warning("erasing a deleted message failed (retrying): %s", exc)
                self._wake.set()
                return
            self._unerased.discard(stream_seq)

    def _untail(self, room: str, done: asyncio.Task[Appended]) -> None:
        if self._tails.get(room) is done:
            del self._tails[room]
        if not done.cancelled():
            done.exception()  # retrieved: a caller that went away cannot warn about it

    # -- retention ----------------------------------------------------------------------------

    async def prune(self, room: str) -> None:
        """Purge the room's prefix nothing needs: beyond the count or expired, not the latest,
        and not keyed within the dedup window. Raises StoreError if NATS fails."""
        with _errors(f"delete old history of {room!r}"):
            subject = self._reader.subject(room)
            last = await self._reader.last(subject)
            if last is None:
                return
            now_us = codec.to_us(datetime.now(UTC))
            oldest_kept = now_us - self._max_age_us
            window_start = last.seq - self._retention.max_messages + 1
            first = current = await self._reader.next(subject, 1)
            while current is not None and current.seq < last.seq:
                if current.seq >= window_start and current.latest_us >= oldest_kept:
                    break
                if (
                    current.keyed
                    and now_us < max(current.sent_us, current.stored_us) + self._window_us
                ):
                    break
                current = await self._reader.next(subject, current.stream_seq + 1)
            if current is not None and first is not None and current.seq > first.seq:
                await self._js.purge_stream(self._stream, seq=current.stream_seq, subject=subject)

    async def maintain(self) -> None:
        """Prune every room; raises StoreError at the first room NATS fails on."""
        with _errors("list the rooms"):
            info = await self._js.stream_info(self._stream, subjects_filter=f"{self._prefix}>")
        for subject in info.state.subjects or {}:
            await self.prune(codec.room_of(subject, self._prefix))

    async def _maintain_forever(self) -> None:
        """Prune every room at open and every MAINTENANCE_INTERVAL, and the rooms appends
        pushed past their count PRUNE_DELAY after; failures are logged, and retried."""
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
                await self._erase_pending()
            except StoreError as exc:
                log.warning("deleting old history failed (retrying): %s", exc)
            except Exception:
                log.exception("deleting old history failed (retrying)")
            self._wake.clear()
            if self._unerased:
                self._wake.set()  # erasing failed: try again after PRUNE_DELAY
            # nats-py waits for replies with asyncio.wait_for, which on Python 3.11 can swallow
            # the cancellation `aclose` sends: so it also says so in `_closed`, checked here.
            if self._closed:
                return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(sweep_at):
                    await self._wake.wait()
            await asyncio.sleep(PRUNE_DELAY)

    def _oldest_kept_us(self) -> int:
        return codec.to_us(datetime.now(UTC)) - self._max_age_us

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"the history store (NATS stream {self._stream}) is closed")


def _stream_seq(stored: Stored | None) -> int:
    return stored.stream_seq if stored else 0


async def _open_stream(js: JetStreamContext, options: Options, retention: Retention) -> str:
    """The epoch of the stream, creating the stream (with a new epoch) if it is missing and
    updating its dedup window and replicas if they changed."""
    window = retention.dedup_window.total_seconds()
    try:
        info = await js.stream_info(options.stream)
    except nats.js.errors.NotFoundError:
        config = StreamConfig(
            name=options.stream,
            description="grpcchat history",
            subjects=[f"{options.prefix}>"],
            storage=StorageType.FILE,
            num_replicas=options.replicas,
            duplicate_window=window,
            allow_direct=True,
            metadata={EPOCH_KEY: uuid.uuid4().hex},
        )
        try:
            info = await js.add_stream(config)
        except nats.js.errors.BadRequestError:
            info = await js.stream_info(options.stream)  # another server created it first
    epoch = (info.config.metadata or {}).get(EPOCH_KEY)
    if not epoch:
        raise StoreError(f"the NATS stream {options.stream} is not a grpcchat history")
    if info.config.duplicate_window != window or info.config.num_replicas != options.replicas:
        config = info.config.evolve(duplicate_window=window, num_replicas=options.replicas)
        await js.update_stream(config)
    return epoch
