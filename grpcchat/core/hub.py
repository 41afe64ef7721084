"""The hub: sessions, rooms, membership, admission, and the one place room messages are
numbered and delivered (direct messages: `direct`; what a join replays: `replay`; join and
leave notices: `presence`; typing notices: `typists`; read markers: `markers`; what an edit,
delete, reaction or reply must look like: `relating`).

Per room, posts form a chain: each hands its append to the store at once, in order (the store
numbers a room's appends in the order they are called), without waiting for the post before it
to be stored, and delivers only once the post before it has delivered, so every subscriber sees
the order history returns while the store commits many appends together. Delivery never waits
on a session: it only offers to bounded queues (see `grpcchat.core.session`), and it is never
re-entrant: a session that overflows during a fan-out is only marked, and the hub forgets it
once the fan-out is over; the leave notices that causes are coalesced per room (see `presence`)
and never evict anyone.

Across processes (a store that is also a `RoomFeed`, see `feed`), room messages are delivered
through `gated`: once each, in seq order, whichever process appended them. Who is where, and
direct messages, cross nodes through a store that is also a `Cluster` (see `cluster`).

Overload slows the inbound side, it never evicts readers: when most sessions of a room (or of
the whole server) lag behind, posting there is refused with a retry-after until they catch up,
and the article's Chat streams are not read meanwhile. Only a session slower than the others
overflows, and only a lagging session whose writer makes no progress at all is cut off as stuck.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict, defaultdict
from collections.abc import AsyncIterator, Coroutine, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from grpcchat.core import listing
from grpcchat.core.cluster import CONNECTED, Cluster, MemberChange, Roster
from grpcchat.core.direct import DirectMessages
from grpcchat.core.errors import (
    AlreadyJoined,
    CapReached,
    LimitExceeded,
    NameTaken,
    NotFound,
    ServerDraining,
    StoreError,
)
from grpcchat.core.feed import RoomFeed
from grpcchat.core.gated import GatedDelivery
from grpcchat.core.history import DEDUP_WINDOW, Appended, HistoryStore
from grpcchat.core.ids import new_message_id
from grpcchat.core.limits import Limits
from grpcchat.core.listing import MembersPage
from grpcchat.core.markers import ReadMarkers
from grpcchat.core.models import (
    Envelope,
    Message,
    Position,
    Relation,
    RoomInfo,
    RoomJoined,
    RoomLeft,
)
from grpcchat.core.presence import DETAIL_LIMIT, PresenceNotices
from grpcchat.core.pressure import BUSY_RETRY, STALL_TIMEOUT, Pressure
from grpcchat.core.ratelimit import RateLimiter, retry_in
from grpcchat.core.relating import check_relation, check_reply
from grpcchat.core.replay import plan_replay, within_bytes
from grpcchat.core.rooms import Room
from grpcchat.core.session import Session
from grpcchat.core.stats import HubStats, Load
from grpcchat.core.typists import Typists
from grpcchat.core.validation import (
    check_epoch,
    check_key,
    check_name,
    check_room,
    check_text,
)

MAX_HISTORY_PAGE = 1000
# A History page also ends before its text passes this many bytes (the rest is the next page):
# 1,000 messages of 4,096 four-byte characters made one 20-byte request a 16 MB answer, held
# whole for a client that never reads it. Each HISTORY_BYTES_PER_REQUEST of a page's text
# counts as one more request against the request rate.
MAX_HISTORY_PAGE_BYTES = 1 << 20
HISTORY_BYTES_PER_REQUEST = 64 << 10
# `load()` from another thread retries this often before it settles for the plain sizes.
_LOAD_ATTEMPTS = 5
# This process's posts whose feed echo is still due, remembered at most this many.
OWN_POSTS = 10_000


T = TypeVar("T")


class Hub:
    def __init__(
        self,
        store: HistoryStore,
        limits: Limits | None = None,
        *,
        dedup_window: timedelta = DEDUP_WINDOW,
    ) -> None:
        self.store = store
        self.limits = limits or Limits()
        # Counters only (read by the metrics endpoint, if any): bumping them costs next to nothing.
        self.stats = HubStats()
        self._rooms: dict[str, Room] = {}
        self._sessions: dict[int, Session] = {}
        self._by_name: defaultdict[str, dict[int, Session]] = defaultdict(dict)
        self._by_peer: defaultdict[str, int] = defaultdict(int)
        self._anonymous = 0
        # Per room, the "delivered" future of its latest post still in flight (see
        # `_store_and_deliver`); the entry goes with that post, so rooms that anyone can create
        # by posting leave nothing behind.
        self._last_post: dict[str, asyncio.Future[None]] = {}
        self._message_rate = RateLimiter(self.limits.rate, self.limits.burst)
        self._request_rate = RateLimiter(self.limits.request_rate, self.limits.request_burst)
        # Who is where on the other nodes, when the store shares presence (see `cluster`).
        self._cluster = store if isinstance(store, Cluster) else None
        self.roster = Roster()
        self._direct = DirectMessages(
            lambda name: list(self._by_name.get(name, {}).values()),
            dedup_window,
            elsewhere=lambda name: self.roster.has(CONNECTED, name),
            forward=self._cluster.send_direct if self._cluster is not None else None,
        )
        self._presence = PresenceNotices(self._rooms.get, self._member_total)
        self._typists = Typists(self._rooms.get)
        self._markers = ReadMarkers(store, lambda name: self._by_name.get(name, {}).values())
        self._pressure = Pressure(self._sessions, self._rooms)
        self._evicted: list[Session] = []
        self._settle_scheduled = False
        self._draining = False
        # Why the hub refuses work while an engine it shares with other nodes is unreachable.
        self._unavailable = ""
        # When other processes append too (else None: the chain's order is the whole order).
        self._gated = (
            GatedDelivery(store, self._fan_out, self._presence.flush)
            if isinstance(store, RoomFeed)
            else None
        )
        # Ids of this process's posts not yet back from the feed: every other post the feed
        # brings counts against its sender's rate here too, so a rate is per user, not per node.
        self._own_posts: OrderedDict[str, float] = OrderedDict()  # id -> when accepted

    @property
    def epoch(self) -> str:
        """The epoch of every position this hub hands out."""
        return self.store.epoch

    @property
    def registered_sessions(self) -> int:
        return len(self._sessions)

    # -- sessions ---------------------------------------------------------------------------

    @asynccontextmanager
    async def connect(
        self, name: str, *, authenticated: bool = False, peer: str = "", peer_counted: bool = False
    ) -> AsyncIterator[Session]:
        """A session for the duration of the block; it leaves all its rooms on exit.

        An empty name is an anonymous listener (the article's Chat stream): no presence, no
        direct messages, no name checks. `peer` is the client's address: without
        authentication, per-client limits key on it. `peer_counted`: the call already holds
        one of the address's slots (`peer_slot`), taken before the session could open.
        """
        self._refuse_if_draining()
        if name:
            name = check_name(name)
            self._check_sessions_per_user(name, authenticated, peer)
        limit = self.limits.max_sessions
        if limit and len(self._sessions) >= limit:
            raise LimitExceeded(f"the server is full ({limit} sessions); try again later")
        with contextlib.nullcontext() if peer_counted else self.peer_slot(peer):
            limit = self.limits.max_anonymous_sessions
            if limit and not name and self._anonymous >= limit:
                raise LimitExceeded(f"{limit} anonymous streams are open; give a name or try later")
            session = Session(
                name,
                authenticated=authenticated,
                peer=peer,
                capacity=self.limits.queue_size,
                max_batch=self.limits.max_batch,
                linger=self.limits.batch_linger,
                answer_linger=self.limits.answer_linger,
                on_close=self._forget,
                on_evicted=self._evicted_during_fan_out,
                on_lag=self._pressure.lag_changed,
            )
            self._sessions[session.id] = session
            self._pressure.register(session)
            if name:
                if name not in self._by_name:
                    self._announce(CONNECTED, name, joined=True)
                self._by_name[name][session.id] = session
            if not name:
                self._anonymous += 1
            try:
                yield session
            finally:
                session.close()
                self._forget(session)  # an evicted session is closed already: forget it anyway

    def _check_sessions_per_user(self, name: str, authenticated: bool, peer: str) -> None:
        """At most `max_sessions_per_user` sessions of a user. Without authentication a name is
        only a claim, so they are counted per address: anyone could otherwise use up a name's
        sessions and keep its user out (as rate limits, they key on the address then)."""
        limit = self.limits.max_sessions_per_user
        sessions = self._by_name.get(name, {}).values()
        if authenticated:
            if limit and len(sessions) >= limit:
                raise LimitExceeded(f"{name!r} already has {limit} sessions open")
        elif limit and sum(s.peer == peer for s in sessions) >= limit:
            where = f" from {peer}" if peer else ""
            raise LimitExceeded(f"{name!r} already has {limit} sessions open{where}")

    @contextlib.contextmanager
    def peer_slot(self, peer: str) -> Iterator[None]:
        """One of `peer`'s session calls, counted until the call is over, not only while its
        session is open: a client cut off as a slow consumer that never reads again keeps its
        call open (its status waits behind what it does not read), and a stream that has not
        said hello yet has no session; neither may let one address open more. Raises
        LimitExceeded when the address holds its limit of them already."""
        limit = self.limits.max_sessions_per_peer
        if limit and peer and self._by_peer.get(peer, 0) >= limit:
            raise LimitExceeded(f"{peer} already has {limit} sessions open")
        if peer:
            self._by_peer[peer] += 1
        try:
            yield
        finally:
            if peer:
                self._by_peer[peer] -= 1
                if not self._by_peer[peer]:
                    del self._by_peer[peer]

    def _forget(self, session: Session) -> None:
        """Take a closed session out of every room at once, even while its writer is stuck."""
        if self._sessions.pop(session.id, None) is None:
            return
        try:
            for room in list(session.rooms):
                self._remove_member(session, room)
        finally:
            session.rooms.clear()
            self._pressure.forget(session)
            sessions = self._by_name.get(session.name)
            if sessions is not None:
                sessions.pop(session.id, None)
                if not sessions:
                    del self._by_name[session.name]
                    self._announce(CONNECTED, session.name, joined=False)
            if not session.name:
                self._anonymous -= 1

    def _evicted_during_fan_out(self, session: Session) -> None:
        """Called by a session that overflowed: forgotten once the current fan-out is over."""
        self.stats.slow_consumers += 1
        self._evicted.append(session)
        if not self._settle_scheduled:
            self._settle_scheduled = True
            asyncio.get_running_loop().call_soon(self._settle_evictions)

    def _settle_evictions(self) -> None:
        self._settle_scheduled = False
        while self._evicted:
            self._forget(self._evicted.pop())

    # -- rooms ------------------------------------------------------------------------------

    async def join(
        self, session: Session, room: str, *, after: Position | None = None, history: int = 0
    ) -> None:
        """Enter `room`: page in the requested replay, then RoomJoined, then live events.

        Race-free resume: the session starts holding live events before history is read, and
        the replay's last seq decides which held messages are dropped as duplicates.
        """
        self._refuse_if_draining()
        room = check_room(room)
        if after is not None:
            check_epoch(after.epoch)
        if session.closed:
            return  # a closed session must not come back as a member of anything
        if room in session.rooms:
            raise AlreadyJoined(f"already in #{room}")
        self._limit_requests(session.principal)
        limit = self.limits.max_rooms_per_session
        if limit and len(session.rooms) >= limit:
            raise CapReached(f"a session may be in at most {limit} rooms: leave one first")
        if (members := self._rooms.get(room)) is not None:
            self._check_name_free(session, members)
        # Read before the room is entered: a history out of reach for a moment (NATS) fails the
        # join here, where it told the room the user joined, and then that they left.
        read_seq = await self._markers.marker(session.name, room)
        if session.closed:
            return
        if room in session.rooms:  # (joined meanwhile)
            raise AlreadyJoined(f"already in #{room}")
        members = self._rooms.get(room)
        if members is None:
            members = self._rooms[room] = Room(room)
            if self._gated is not None:
                self._gated.open(room)
        self._check_name_free(session, members)
        session.rooms.add(room)
        session.begin_join(room)
        # The members as the newcomer joins them: its RoomJoined lists these, and every change
        # from here on reaches it as a notice (held behind the RoomJoined), none twice.
        self._presence.arrived(room, session.id)
        if members.add(session):
            self._name_changed(members, session.name, joined=True)
        sample = listing.sample(members, self.roster, DETAIL_LIMIT)
        member_total = self._member_total(room)
        if after is not None:
            self.stats.resumes += 1
        try:
            # Nothing may suspend between planning the replay and starting the room's gated
            # delivery.
            cursor = await plan_replay(
                self.store, room, after, history, self.limits.max_replay, stats=self.stats
            )
        except BaseException:
            session.cancel_join(room)
            self._remove_member(session, room)
            raise
        if self._gated is not None and room in session.rooms:
            # Live delivery starts after the first joiner's replay; every joiner replays up to
            # where it is now (what it delivered is stored), and gets the rest live.
            cursor.extend(self._gated.start(room, cursor.until + 1))
        if session.closed or room not in session.rooms:
            return
        position = Position(cursor.until, self.store.epoch)
        joined = RoomJoined(room, sample, position, member_total, read_seq)
        session.start_replay(room, cursor, Envelope(joined))

    def _check_name_free(self, session: Session, room: Room) -> None:
        if not session.name:
            return
        for other in room.names.get(session.name, {}).values():
            if not (other.authenticated and session.authenticated):
                raise NameTaken(f"the name {session.name!r} is already taken in #{room.name}")

    async def leave(self, session: Session, room: str) -> None:
        room = check_room(room)
        if room not in session.rooms:
            raise NotFound(f"not in #{room}")
        # Not against the request rate: a leave only gives back what a join (which was counted)
        # took, and a client told "slow down" has already forgotten the room, still in it here.
        session.cancel_join(room)
        self._remove_member(session, room)
        session.offer(Envelope(RoomLeft(room)))

    def _remove_member(self, session: Session, room: str) -> None:
        session.rooms.discard(room)
        members = self._rooms.get(room)
        if members is None:
            return
        if members.remove(session):
            self._name_changed(members, session.name, joined=False)
        self._typists.left(session, room)
        if not members.sessions:
            del self._rooms[room]
            if self._gated is not None:
                self._gated.close(room)

    def members_page(
        self, room: str = "", *, after: str = "", limit: int = 0, principal: str = ""
    ) -> MembersPage:
        """One page of the room's sorted names after `after` (see `listing`)."""
        if self._unavailable:  # the other nodes' names are not known meanwhile: no half list
            raise StoreError(self._unavailable)
        self._limit_requests(principal)
        return listing.members_page(self._rooms, self.roster, check_room(room), after, limit)

    async def rooms(
        self, *, after: str = "", limit: int = 0, principal: str = "", user: str = ""
    ) -> tuple[list[RoomInfo], str]:
        """One page of the rooms with members or history, and the next page's token; with a
        `user`, each room's count of messages that user has not read."""
        if user:
            limit = listing.unread_page_size(limit)
            self._limit_requests(principal, listing.unread_page_cost(limit))
        else:
            self._limit_requests(principal)
        user = self._markers.user(user) if user else ""
        live = [*self._rooms, *self.roster.rooms()]
        return await listing.rooms_page(
            self.store, live, self._member_total, after, limit, user=user
        )

    def _member_total(self, room: str) -> int:
        """Distinct names in the room on every node."""
        members = self._rooms.get(room)
        if members is None:
            return self.roster.count(room)
        return members.member_count + self.roster.count(room) - members.shared

    # -- other nodes (see `cluster`) --------------------------------------------------------

    def _name_changed(self, members: Room, name: str, *, joined: bool) -> None:
        """A name's first session here entered the room, or its last left: told to this
        node's members unless another node has the name there (then nothing changed for
        them), and to the other nodes."""
        self._announce(members.name, name, joined=joined)
        if self.roster.has(members.name, name):
            members.shared += 1 if joined else -1
        else:
            self._presence.changed(members.name, name, joined)

    def _announce(self, room: str, name: str, *, joined: bool) -> None:
        if self._cluster is not None and name:
            self._cluster.announce([MemberChange(room, name, joined)])

    def members(self) -> dict[str, list[str]]:
        """This node's names by room, CONNECTED included (see `cluster.LocalNode`)."""
        rooms = {name: list(room.names) for name, room in self._rooms.items() if room.names}
        rooms[CONNECTED] = list(self._by_name)
        return rooms

    def remote_changed(self, changes: list[MemberChange]) -> None:
        """Names entered or left rooms on other nodes: a change for this node's members of a
        room only where this node has no session of that name there."""
        for change in changes:
            members = self._rooms.get(change.room) if change.room != CONNECTED else None
            if members is None:
                continue
            if change.name in members.names:
                members.shared += 1 if change.joined else -1
            else:
                self._presence.changed(change.room, change.name, change.joined)

    def remote_direct(self, message: Message, key: str) -> None:
        """A direct message sent on another node: to this node's sessions of either name."""
        self._message_rate.charge(message.sender)
        self._direct.receive(message, key)

    # -- messages ---------------------------------------------------------------------------

    async def post(
        self,
        sender: str,
        text: str,
        *,
        room: str = "",
        key: str = "",
        recipient: str = "",
        action: bool = False,
        principal: str = "",
        reply_to: str = "",
        relation: Relation | None = None,
        shielded: bool = True,
    ) -> Appended:
        """Validate, rate-limit, admit, store, number and deliver one message; return it as
        accepted (or, for a repeated key, the original). `principal` is who the rate limit
        counts against (the authenticated user or the peer address; default the sender).

        A caller that gives up (a cancelled Send) must not leave a message stored but never
        delivered, so storing and delivering run shielded, in a task of their own. A caller
        whose task is never cancelled while it waits (a stream's posts: see InFlight) passes
        `shielded=False` and runs them itself: a task less a message (7-9% of the unpaced
        bench's throughput).

        A `relation` (an edit, delete or reaction of an earlier message) is an entry of the
        room's log like a message, and counts against the same rate; whether its target
        allows it is the store's to say (see `HistoryStore`)."""
        self._refuse_if_draining()
        sender = check_name(sender)
        if relation is None:
            text = check_text(text)
        key = check_key(key)
        if not recipient:  # a direct message goes to a person: its room is ignored
            room = check_room(room)
        # Refused for the rate (or, below, as busy) before the first suspension: the article's
        # stream keeps a throttled post's order on it (see `inflight.WaitingLine`).
        wait = self._message_rate.wait_time(principal or sender)
        if wait:
            self.stats.rate_limited_messages += 1
            raise LimitExceeded(
                f"slow down: at most {self.limits.rate:g} messages a second; {retry_in(wait)}",
                retry_after=wait,
            )
        if relation is not None:
            text = check_relation(
                relation, text, recipient=recipient, reply_to=reply_to, action=action
            )
        reply_to = check_reply(reply_to, recipient=recipient)
        if recipient:
            appended = self._direct.send(
                sender, check_name(recipient, "recipient"), text, action, key
            )
        else:
            self._admit(room)
            storing = self._store_and_deliver(sender, text, room, key, action, reply_to, relation)
            appended = await (_shielded(storing) if shielded else storing)
        if not appended.duplicate:
            self.stats.accepted_entry(appended.message)
        return appended

    async def _store_and_deliver(
        self,
        sender: str,
        text: str,
        room: str,
        key: str,
        action: bool,
        reply_to: str = "",
        relation: Relation | None = None,
    ) -> Appended:
        """Take the room's next place in line and hand the append to the store at once (no
        suspension in between, so seqs follow the line); deliver once the post ahead has
        delivered. The line never stalls: this post counts as delivered once it is over (stored
        and delivered, or failed) and the post ahead has delivered."""
        previous = self._last_post.get(room)
        delivered: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._last_post[room] = delivered
        accepted_at = time.monotonic()
        message_id = new_message_id()
        if self._gated is not None:
            self._own_posts[message_id] = accepted_at
            if len(self._own_posts) > OWN_POSTS:
                self._own_posts.popitem(last=False)
        appended: Appended | None = None
        try:
            appended = await self.store.append(
                id=message_id,
                room=room,
                sender=sender,
                text=text,
                sent_at=datetime.now(UTC),
                key=key,
                action=action,
                reply_to=reply_to,
                relation=relation,
            )
            self.stats.store_append.observe(time.monotonic() - accepted_at)
            if previous is not None and not previous.done():
                # Shielded: were this task cancelled, the post ahead must stay in line.
                await asyncio.shield(previous)
            if not appended.duplicate:
                # Joins are announced before what the newcomers say.
                self._presence.flush(room)
                self._deliver(room, Envelope(appended.message, accepted_at))
            return appended
        finally:
            if appended is None or appended.duplicate:  # nothing of this id will come back
                self._own_posts.pop(message_id, None)
            if previous is None or previous.done():
                self._delivered(room, delivered)
            else:  # failed before its turn: the posts behind still wait for the one ahead
                previous.add_done_callback(lambda _: self._delivered(room, delivered))

    def _delivered(self, room: str, delivered: asyncio.Future[None]) -> None:
        if not delivered.done():
            delivered.set_result(None)
        if self._last_post.get(room) is delivered:
            del self._last_post[room]

    def receive(self, message: Message) -> None:
        """A room message from the store's feed (appended by any process, this one included):
        delivered unless it was already; for a room without members here, nothing to do. Its
        fan-out is timed from its acceptance here, or from its arrival (another node's)."""
        accepted_at = self._own_posts.pop(message.id, None)
        if accepted_at is None:
            self._message_rate.charge(message.sender)
            accepted_at = time.monotonic()
        if self._gated is not None:
            self._gated.receive(message, accepted_at)

    def _deliver(self, room: str, envelope: Envelope) -> None:
        if self._gated is None:
            self._fan_out(room, envelope)
        else:
            self._gated.deliver(room, envelope)

    def _fan_out(self, room: str, envelope: Envelope) -> None:
        members = self._rooms.get(room)
        if members is None:
            return
        try:
            # Offering never changes the room (evictions are only marked), so no copy.
            for member in members.sessions.values():
                member.offer(envelope, room)
        finally:
            self._settle_evictions()

    # -- conversations: typing notices and read markers -------------------------------------

    def typing(self, session: Session, room: str, active: bool) -> None:
        """`session`'s user started (or refreshed) or stopped typing in `room`, a room it is
        in: told to the room's other members here (see `typists`)."""
        self._typists.notice(session, check_room(room), active)

    async def mark_read(
        self, user: str, room: str, seq: int, *, principal: str = "", told: Session | None = None
    ) -> int:
        """Move `user`'s read marker in `room` up to `seq`; the marker afterwards. The user's
        sessions here in that room are told, except `told` (see `markers`)."""
        self._refuse_if_draining()
        user, room = ReadMarkers.user(user), check_room(room)
        self._limit_requests(principal)
        return await self._markers.mark(user, room, seq, told=told)

    # -- overload ---------------------------------------------------------------------------

    @property
    def lagging_sessions(self) -> int:
        return self._pressure.lagging

    def _admit(self, room: str) -> None:
        """Refuse a post to a room that is behind (its readers catch up meanwhile)."""
        members = self._rooms.get(room)
        if not self._pressure.behind(members):
            return
        self._evict_stalled()
        if self._pressure.behind(members):
            raise LimitExceeded(
                f"#{room} is busy: its readers are catching up; retry shortly",
                retry_after=BUSY_RETRY,
            )

    async def until_accepting(self, room: str) -> None:
        """Wait while posting to `room` would be refused as busy (the Chat stream's pushback:
        it has no way to refuse one message, so it stops reading instead)."""
        room = check_room(room)
        while self._pressure.behind(self._rooms.get(room)) and not self._draining:
            self._evict_stalled()
            await asyncio.sleep(BUSY_RETRY)

    def _evict_stalled(self) -> None:
        try:
            for session in self._pressure.stuck():
                session.evict_stalled(STALL_TIMEOUT)
        finally:
            self._settle_evictions()

    # -- reads ------------------------------------------------------------------------------

    async def history(
        self,
        room: str,
        *,
        before: int | None = None,
        after: int | None = None,
        limit: int = 50,
        newest_first: bool = False,
        principal: str = "",
    ) -> list[Message]:
        room = check_room(room)
        self._limit_requests(principal)
        limit = max(1, min(limit, MAX_HISTORY_PAGE))
        messages = await self.store.read(
            room, before=before, after=after, limit=limit, newest_first=newest_first
        )
        messages, size = within_bytes(messages, MAX_HISTORY_PAGE_BYTES)
        if principal and size >= HISTORY_BYTES_PER_REQUEST:
            self._request_rate.charge(principal, size // HISTORY_BYTES_PER_REQUEST)
        return messages

    def _limit_requests(self, principal: str, cost: float = 1.0) -> None:
        """Joins, reads and read markers have their own rate, per principal; a read
        that makes the store work harder costs more than one request."""
        wait = self._request_rate.wait_time(principal, cost) if principal else 0.0
        if wait:
            self.stats.rate_limited_requests += 1
            raise LimitExceeded(
                f"slow down: at most {self.limits.request_rate:g} joins, reads and "
                f"read markers a second; {retry_in(wait)}",
                retry_after=wait,
            )

    # -- lifecycle --------------------------------------------------------------------------

    def _refuse_if_draining(self) -> None:
        if self._draining:
            raise ServerDraining("server is shutting down; try again shortly")
        if self._unavailable:
            raise StoreError(self._unavailable)

    def suspend(self, reason: str) -> None:
        """An engine shared with other nodes (NATS) is unreachable: refuse new work with
        `reason` (UNAVAILABLE) and end every session, so its client fails over to a node that
        can serve it. `resume` undoes it."""
        self._unavailable = reason
        for session in list(self._sessions.values()):
            session.close(StoreError(reason))

    def resume(self) -> None:
        self._unavailable = ""

    @property
    def suspended(self) -> bool:
        return bool(self._unavailable)

    @property
    def draining(self) -> bool:
        return self._draining

    def load(self) -> Load:
        """Sessions, rooms, memberships and queued events right now. Safe to call from another
        thread (the metrics endpoint's): it copies what it iterates, again if the event loop
        changed it meanwhile, and reads nothing but ints and sizes."""
        for _ in range(_LOAD_ATTEMPTS):
            try:
                sessions = list(self._sessions.values())
                rooms = list(self._rooms.values())
                queued = [session.queued for session in sessions]
                memberships = sum(len(room) for room in rooms)
            except RuntimeError:  # "dictionary changed size during iteration"
                continue
            return Load(
                sessions=len(sessions),
                rooms=len(rooms),
                memberships=memberships,
                queued=sum(queued),
                max_queued=max(queued, default=0),
                lagging=self._pressure.lagging,
            )
        return Load(len(self._sessions), len(self._rooms), 0, 0, 0, self._pressure.lagging)

    def drain(self) -> None:
        """Refuse new work and ask every session to flush and end (UNAVAILABLE)."""
        self._draining = True
        if self._gated is not None:
            self._gated.cancel()
        for session in list(self._sessions.values()):
            session.close(ServerDraining("server is shutting down; reconnect shortly"))
        self._presence.close()

    def session_count(self, room: str = "") -> int:
        members = self._rooms.get(check_room(room))
        return len(members) if members is not None else 0


async def _shielded(work: Coroutine[Any, Any, T]) -> T:
    """`work` in a task of its own that a cancelled caller does not cancel. Its outcome is
    then nobody's: retrieved here, or asyncio logs a failure (a store gone away while the
    client gave up) as a "Task exception was never retrieved" traceback."""
    task = asyncio.ensure_future(work)
    task.add_done_callback(_outcome_seen)
    return await asyncio.shield(task)


def _outcome_seen(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()
