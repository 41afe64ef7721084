"""`NatsStore`: the HistoryStore contract on JetStream (the design is in this package's
docstring)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy, StorageType, StreamConfig

from grpcchat.core.cluster import LocalNode, MemberChange
from grpcchat.core.errors import StoreError
from grpcchat.core.history import Appended, Retention, RoomCount
from grpcchat.core.models import Message
from grpcchat.core.urls import redacted_url
from grpcchat.store.nats import codec
from grpcchat.store.nats.cluster import NatsCluster
from grpcchat.store.nats.codec import Lates, Options, Stored
from grpcchat.store.nats.reader import Reader

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
# The feed's consumer sends a heartbeat this often when idle; nats-py recreates it (from the
# last stream seq delivered) after two missed ones, or when a delivery is missing.
FEED_HEARTBEAT = 2.0
# A connection whose server stops answering (no TCP reset: a partition) is given up after
# this many seconds without a PONG, times two, and reconnected.
PING_INTERVAL = 5
NATS_ERRORS = (nats.errors.Error, TimeoutError, OSError)


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
                epoch = await _open_stream(
                    nc.jetstream(timeout=REQUEST_TIMEOUT), options, retention
                )
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
    ) -> Appended:
        """Take the room's next place in line now (before suspending), publish once the appends
        before it in this process are done; a caller cancelled meanwhile does not take its
        append back."""
        self._check_open()
        sent_us = codec.to_us(sent_at)
        draft = Message(id, room, sender, text, codec.from_us(sent_us), 0, self._epoch, "", action)
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
            low = max(after if after is not None else 0, last.seq - self._retention.max_messages)
            high = min(before if before is not None else last.seq + 1, last.seq + 1)
            oldest_kept = self._oldest_kept_us()
            if not newest_first:
                page: list[Message] = []
                async for stored in self._reader.between(subject, last, low, high):
                    if stored.sent_us >= oldest_kept:
                        page.append(stored.message)
                        if len(page) == limit:
                            break
                return page
            # Newest first: read forward a chunk just below `high`, then the one below it, ...
            newest: list[Message] = []
            while len(newest) < limit and high - low > 1:
                start = max(low, high - 1 - (limit - len(newest)))
                chunk = [
                    stored.message
                    async for stored in self._reader.between(subject, last, start, high)
                    if stored.sent_us >= oldest_kept
                ]
                newest += chunk[::-1][: limit - len(newest)]
                high = start + 1
            return newest

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
                count = await self._reader.count(name, self._oldest_kept_us())
                if count:
                    page.append(RoomCount(name, count))
                    if len(page) == limit:
                        break
            return page

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
        for _ in range(PUBLISH_ATTEMPTS):
            seq = head.seq + 1 if head else 1
            latest = max(head.latest_us, sent_us) if head else sent_us
            lates = (head.lates if head else Lates()).after(
                seq,
                sent_us,
                late=head is not None and sent_us < head.latest_us,
                window_start=seq - self._retention.max_messages + 1,
            )
            message = replace(draft, seq=seq)
            payload, headers = codec.encode(message, sent_us, latest, lates, bool(key))
            headers["Nats-Expected-Last-Subject-Sequence"] = str(head.stream_seq if head else 0)
            if msg_id:
                headers["Nats-Msg-Id"] = msg_id
            try:
                ack = await self._js.publish(subject, payload, headers=headers)
            except TimeoutError:
                # Unanswered: it may be stored all the same. If it is, it is ours to return.
                # Without a connection that cannot be asked (a retry with the key can).
                self._check_connected(f"learn whether {draft.room!r} got the message")
                head = await self._reader.last(subject)
                if head is not None and head.message.id == draft.id:
                    self._heads[draft.room] = head
                    return Appended(head.message, duplicate=False)
                raise
            except nats.js.errors.BadRequestError as exc:
                if exc.err_code != WRONG_LAST_SEQUENCE:
                    raise
                # Someone appended meanwhile (or our own earlier attempt got through).
                head = self._heads[draft.room] = await self._reader.last(subject)
                if head is not None and head.message.id == draft.id:
                    return Appended(head.message, duplicate=False)
                continue
            if ack.duplicate:
                original = await self._reader.get(ack.seq)
                if original is not None and sent_us - original.sent_us < self._window_us:
                    return Appended(original.message, duplicate=True)
                # Outside our window (or gone): a new message, under a new id.
                msg_id = f"{msg_id.partition('#')[0]}#{ack.seq}"
                continue
            stored = Stored(message, ack.seq, sent_us, sent_us, latest, lates, bool(key))
            self._heads[draft.room] = stored
            if seq > self._retention.max_messages or sent_us < self._oldest_kept_us():
                self._dirty.add(draft.room)
                self._wake.set()
            return Appended(message, duplicate=False)
        raise StoreError(f"too many concurrent appends to {draft.room!r}: try again")

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
            except StoreError as exc:
                log.warning("deleting old history failed (retrying): %s", exc)
            except Exception:
                log.exception("deleting old history failed (retrying)")
            self._wake.clear()
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
