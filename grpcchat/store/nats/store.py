"""`NatsStore`: the HistoryStore contract on JetStream (the design is in this package's
docstring), made of its parts: the appends (`appender`), the rooms' indexes (`indexes`), the
feed (`feed`), retention and erasing (`maintenance`, `erasure`), read markers (`markers`) and
the cluster (`cluster`). Reads, counts and unread counts are here."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime

from nats.aio.client import Client
from nats.js import JetStreamContext

from grpcchat.core.cluster import LocalNode, MemberChange
from grpcchat.core.history import MAX_UNREAD, Appended, Retention, RoomCount
from grpcchat.core.models import Message, Relation
from grpcchat.store.nats import codec
from grpcchat.store.nats.appender import Appender
from grpcchat.store.nats.cluster import NatsCluster
from grpcchat.store.nats.codec import Options, Stored
from grpcchat.store.nats.connection import NATS_ERRORS, REQUEST_TIMEOUT, Link, connect
from grpcchat.store.nats.erasure import Eraser
from grpcchat.store.nats.feed import Feed
from grpcchat.store.nats.indexes import Indexes
from grpcchat.store.nats.maintenance import Maintenance
from grpcchat.store.nats.markers import Markers
from grpcchat.store.nats.reader import Reader
from grpcchat.store.nats.state import RoomState
from grpcchat.store.nats.window import Window

# How long `aclose` waits for the appends under way (each request is bounded too).
# Closing, from its start to the connection's close, whatever NATS does meanwhile; and at
# least this for the close itself (it sends what is still buffered).
CLOSE_TIMEOUT = 3.0
LAST_CLOSE_TIMEOUT = 0.5
FLUSH_TIMEOUT = int(REQUEST_TIMEOUT)  # nats-py's flush takes whole seconds


class NatsStore:
    """The `HistoryStore` contract on a JetStream stream."""

    def __init__(
        self,
        nc: Client,
        options: Options,
        retention: Retention,
        epoch: str,
        link: Link | None = None,
    ) -> None:
        self._nc = nc
        if link is None:
            link = Link(options)
            link.up.set()
        self._link = link
        self._js: JetStreamContext = nc.jetstream(timeout=REQUEST_TIMEOUT)
        self._epoch = epoch
        self._window = Window(retention)
        self._reader = Reader(
            self._js, options.stream, options.prefix, epoch, retention.max_messages
        )
        self._markers = Markers(self._js, options.stream, epoch, retention)
        self._indexes = Indexes(self._reader, self._window, epoch)
        wake = asyncio.Event()
        self._eraser = Eraser(self._js, options.stream, wake)
        self._maintenance = Maintenance(self._js, self._reader, self._window, self._eraser, wake)
        self._appender = Appender(
            self._js,
            link,
            self._reader,
            self._window,
            self._indexes,
            self._eraser,
            self._maintenance,
        )
        self._feed = Feed(self._js, link, self._reader, options.prefix, self._saw, epoch)
        self._cluster = NatsCluster(nc, options.stream)

    @classmethod
    async def open(cls, url: str, retention: Retention) -> NatsStore:
        """Connect to the NATS servers of `url` and open (creating it if missing) its stream.
        Raises StoreError, naming the servers, if NATS cannot be reached or refuses."""
        options = codec.parse_url(url)
        nc, link, epoch = await connect(options, retention)
        return cls(nc, options, retention, epoch, link)

    @property
    def connected(self) -> bool:
        """Whether the connection to NATS is up right now (it reconnects by itself)."""
        return bool(self._nc.is_connected)

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
        self._link.check_open()
        draft = Message(
            id,
            room,
            sender,
            text,
            codec.from_us(codec.to_us(sent_at)),
            0,
            self._epoch,
            "",
            action,
            reply_to=reply_to,
            relation=relation,
        )
        return await self._appender.append(draft, key)

    async def read(
        self,
        room: str,
        *,
        after: int | None = None,
        before: int | None = None,
        limit: int = 100,
        newest_first: bool = False,
    ) -> list[Message]:
        self._link.check_open()
        if limit <= 0:
            return []
        with self._link.request(f"read the history of #{room}"):
            subject = self._reader.subject(room)
            last = await self._reader.last(subject)
            if last is None:
                return []
            state = await self._indexes.upto(room, last)
            low = max(after if after is not None else 0, self._window.start(last.seq) - 1)
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
        oldest_kept = self._window.oldest_kept_us()
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
                self._eraser.later(stored.stream_seq)  # its erasing failed, or is under way
            if stored.sent_us >= oldest_kept:
                yield state.current(stored.message)
        for message in erased[gone:]:
            if codec.to_us(message.sent_at) >= oldest_kept:
                yield message

    async def last_seq(self, room: str) -> int:
        self._link.check_open()
        with self._link.request(f"read the last seq of #{room}"):
            last = await self._reader.last(self._reader.subject(room))
        return last.seq if last else 0

    async def rooms(self, *, after: str = "", limit: int = 100) -> list[RoomCount]:
        self._link.check_open()
        if limit <= 0:
            return []
        with self._link.request("list the rooms"):
            names = sorted(name for name in await self._reader.rooms() if name > after)
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
        oldest_kept = self._window.oldest_kept_us()
        count = await self._reader.count(room, oldest_kept)
        if count is not None:
            return count
        last = await self._reader.last(self._reader.subject(room))
        if last is None:
            return 0
        state = await self._indexes.upto(room, last)
        return state.count(self._window.start(last.seq), oldest_kept)

    # -- read markers (see `markers`) ----------------------------------------------------------

    async def mark_read(self, user: str, room: str, seq: int) -> int:
        self._link.check_open()
        with self._link.request(f"move the read marker of {user!r} in #{room}"):
            last = await self._reader.last(self._reader.subject(room))
            return await self._markers.advance(user, room, min(seq, last.seq if last else 0))

    async def read_marker(self, user: str, room: str) -> int:
        self._link.check_open()
        with self._link.request(f"read the read marker of {user!r} in #{room}"):
            marker, _ = await self._markers.get(user, room)
        return marker

    async def unread(self, user: str, rooms: list[str]) -> dict[str, int]:
        """Exact in a room this process has indexed: counted in the index (brought up to the
        room's last entry), from the newest entry back to the marker, stopping at MAX_UNREAD.
        Any other room is not read to count it (a page of rooms asks every few seconds, and
        building each index would read up to the retention count per room and crowd the
        others out of MAX_INDEXED): its count is the entries after the marker that the stream
        still holds, from the room's first and last messages (two requests): every retained
        message counted exactly lies among them, and so may relations, the user's own, deleted
        messages and expired ones not purged yet, as the contract allows."""
        self._link.check_open()
        counts: dict[str, int] = {}
        for room in dict.fromkeys(rooms):
            with self._link.request(f"count what {user!r} has not read in #{room}"):
                marker, _ = await self._markers.get(user, room)
                subject = self._reader.subject(room)
                last = await self._reader.last(subject)
                oldest_kept = self._window.oldest_kept_us()
                if last is None or last.seq <= marker or last.latest_us < oldest_kept:
                    counts[room] = 0  # nothing after the marker, or all of it expired
                    continue
                window_start = self._window.start(last.seq)
                if self._indexes.peek(room) is None:
                    # Purges take prefixes only: nothing retained lies before the first held.
                    first = await self._reader.next(subject, 1)
                    start = max(marker + 1, window_start, first.seq if first else last.seq)
                    counts[room] = min(last.seq - start + 1, MAX_UNREAD)
                    continue
                state = await self._indexes.upto(room, last)
                counts[room] = state.unread(user, marker, window_start, oldest_kept, MAX_UNREAD)
        return counts

    # -- retention (see `maintenance`) ---------------------------------------------------------

    async def prune(self, room: str) -> None:
        """Purge the room's prefix nothing needs: beyond the count or expired, not the latest,
        and not keyed within the dedup window. Raises StoreError if NATS fails."""
        await self._maintenance.prune(room)

    async def maintain(self) -> None:
        """Prune every room; raises StoreError at the first room NATS fails on."""
        await self._maintenance.maintain()

    async def aclose(self) -> None:
        """Stop the maintenance job, let the appends under way finish, flush and close the
        connection: all of it within CLOSE_TIMEOUT (plus a moment for the close itself), so a
        NATS that stopped answering cannot hold a shutdown up (each of those steps has a
        timeout of its own of seconds: together, 14 s past the grace)."""
        if self._link.closing:
            return
        self._link.closing = True
        self._maintenance.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CLOSE_TIMEOUT
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(deadline):
                await self._cluster.close()
                await asyncio.wait([self._maintenance.task, *self._appender.tails.values()])
                # A flush, not nats-py's drain: drain runs a task per subscription, and when a
                # timeout cuts it short those tasks can fail with nobody to retrieve the error.
                # Whatever the feed still receives has no session left to go to; what must not
                # be lost is what this process published, and the flush's round trip proves
                # the server has it (close sends the rest).
                with contextlib.suppress(*NATS_ERRORS, RuntimeError):
                    await self._nc.flush(timeout=FLUSH_TIMEOUT)
        # With NATS gone, nats-py's close fails sending what it still holds (ConnectionResetError;
        # under uvloop a RuntimeError, "the handler is closed") or waits on a dead link: the
        # store is closed all the same.
        with contextlib.suppress(*NATS_ERRORS, RuntimeError, TimeoutError):
            async with asyncio.timeout(max(deadline - loop.time(), LAST_CLOSE_TIMEOUT)):
                await self._nc.close()

    # -- the feed and the Cluster: across processes (see `feed`, `cluster`) ---------------------

    async def follow(
        self,
        deliver: Callable[[Message], None],
        following: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """The `RoomFeed` (see `feed.Feed.follow`)."""
        self._link.check_open()
        await self._feed.follow(deliver, following)

    def _saw(self, stored: Stored) -> None:
        """An entry the feed delivered: this process's view of its room follows it."""
        self._appender.saw(stored)
        self._indexes.offer(stored)

    async def share(self, node: LocalNode) -> None:
        await self._cluster.share(node)

    def announce(self, changes: list[MemberChange]) -> None:
        self._cluster.announce(changes)

    def send_direct(self, message: Message, key: str) -> None:
        self._cluster.send_direct(message, key)
