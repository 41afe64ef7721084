"""The hub: rooms, membership, presence, direct messages, and the one place messages are
numbered and delivered.

Per room, storing and delivering happen under one lock, so every subscriber sees the order
history returns. Delivery never waits on a session: it only offers to bounded queues (see
`grpcchat.core.session`).
"""

from __future__ import annotations

import asyncio
import uuid
import weakref
from collections import OrderedDict, defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime

from grpcchat.core.errors import LimitExceeded, NameTaken, NotFound, ServerDraining
from grpcchat.core.history import DEDUP_WINDOW, Appended, HistoryStore
from grpcchat.core.limits import Limits
from grpcchat.core.models import (
    Envelope,
    HistoryGap,
    Message,
    Position,
    PresenceChange,
    RoomInfo,
    RoomJoined,
    RoomLeft,
)
from grpcchat.core.ratelimit import RateLimiter
from grpcchat.core.session import Session
from grpcchat.core.validation import check_name, check_room, check_text

_PAGE = 1000
MAX_HISTORY_PAGE = 1000
# Direct messages are not stored, so the hub remembers their idempotency keys itself (for the
# store's dedup window, and at most this many).
_MAX_DIRECT_KEYS = 100_000


class Hub:
    def __init__(self, store: HistoryStore, limits: Limits | None = None) -> None:
        self.store = store
        self.limits = limits or Limits()
        self._members: defaultdict[str, dict[int, Session]] = defaultdict(dict)
        self._by_name: defaultdict[str, dict[int, Session]] = defaultdict(dict)
        self._sessions: dict[int, Session] = {}
        # Weak: a room's lock lives while someone holds or awaits it, so rooms that anyone can
        # create by posting do not accumulate locks forever.
        self._room_locks: weakref.WeakValueDictionary[str, asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )
        self._rate = RateLimiter(self.limits.rate, self.limits.burst)
        self._direct_keys: OrderedDict[tuple[str, str], Message] = OrderedDict()
        self._draining = False

    @property
    def epoch(self) -> str:
        """The epoch of every position this hub hands out."""
        return self.store.epoch

    # -- sessions ---------------------------------------------------------------------------

    @asynccontextmanager
    async def connect(self, name: str, *, authenticated: bool = False) -> AsyncIterator[Session]:
        """A session for the duration of the block; it leaves all its rooms on exit.

        An empty name is an anonymous listener (the article's Chat stream): no presence, no
        direct messages, no name checks.
        """
        self._refuse_if_draining()
        if name:
            name = check_name(name)
            limit = self.limits.max_sessions_per_user
            if limit and len(self._by_name.get(name, {})) >= limit:
                raise LimitExceeded(f"{name!r} already has {limit} sessions open")
        session = Session(
            name,
            authenticated=authenticated,
            capacity=self.limits.queue_size,
            max_batch=self.limits.max_batch,
            linger=self.limits.batch_linger,
            on_close=self._forget,
        )
        self._sessions[session.id] = session
        if name:
            self._by_name[name][session.id] = session
        try:
            yield session
        finally:
            session.close()

    def _forget(self, session: Session) -> None:
        """Take a closed session out of every room at once, even while its writer is stuck."""
        for room in list(session.rooms):
            self._remove_member(session, room)
        self._sessions.pop(session.id, None)
        sessions = self._by_name.get(session.name)
        if sessions is not None:
            sessions.pop(session.id, None)
            if not sessions:
                del self._by_name[session.name]

    # -- rooms ------------------------------------------------------------------------------

    async def join(
        self, session: Session, room: str, *, after: Position | None = None, history: int = 0
    ) -> None:
        """Enter `room`: queue the requested replay, then RoomJoined, then live events.

        Race-free resume: the session starts collecting live events before history is read,
        and the replay's last seq decides which collected messages are dropped as duplicates.
        """
        self._refuse_if_draining()
        room = check_room(room)
        if room in session.rooms or session.closed.is_set():
            return  # a closed session must not come back as a member of anything
        limit = self.limits.max_rooms_per_session
        if limit and len(session.rooms) >= limit:
            raise LimitExceeded(f"a session may be in at most {limit} rooms")
        self._check_name_free(session, room)
        newcomer = bool(session.name) and session.name not in self.members(room)
        session.rooms.add(room)
        self._members[room][session.id] = session
        session.begin_replay(room)
        # Announced before the replay's await, so that a session closed meanwhile (evicted,
        # expired, drained) is seen to leave a room it was seen to enter, never the reverse.
        if newcomer:
            self._announce(room, session.name, joined=True, exclude=session)
        try:
            replayed, gap, last_seq = await self._replay(room, after, history)
        except BaseException:
            self._remove_member(session, room)
            raise
        if session.closed.is_set():
            return
        # A history replay may include messages newer than `last_seq` (read a moment later).
        latest = max(last_seq, replayed[-1].seq if replayed else 0)
        joined = RoomJoined(room, tuple(self.members(room)), Position(latest, self.store.epoch))
        envelopes = [Envelope(gap)] if gap else []
        envelopes += [Envelope(m) for m in replayed]
        last_replayed = replayed[-1].seq if replayed else last_seq
        session.finish_replay(room, envelopes, last_replayed, Envelope(joined))

    def _check_name_free(self, session: Session, room: str) -> None:
        if not session.name:
            return
        for other in self._members.get(room, {}).values():
            if other.name == session.name and not (other.authenticated and session.authenticated):
                raise NameTaken(f"the name {session.name!r} is already taken in #{room}")

    async def _replay(
        self, room: str, after: Position | None, history: int
    ) -> tuple[list[Message], HistoryGap | None, int]:
        """What to replay for a join, any gap to report, and the room's latest seq."""
        epoch = self.store.epoch
        last_seq = await self.store.last_seq(room)
        # A position past the end of this epoch's history means the history was rewound (a
        # restored backup, writes lost in a crash): its seqs will be reused, so say so.
        rewound = after is not None and after.epoch == epoch and after.seq > last_seq
        if after is None or after.epoch != epoch or rewound:
            gap = None
            if after is not None and after.seq:
                reason = "rewound" if rewound else "replaced"
                gap = HistoryGap(room, 0, 0, f"the server's history was {reason} since you left")
            count = min(history, self.limits.max_replay)
            latest = await self.store.read(room, limit=count, newest_first=True) if count else []
            return latest[::-1], gap, last_seq
        # Resume: everything after the position, or at most the newest `max_replay` of it.
        start = max(after.seq, last_seq - self.limits.max_replay)
        replayed: list[Message] = []
        cursor = start
        while cursor < last_seq:
            page = await self.store.read(room, after=cursor, limit=min(_PAGE, last_seq - cursor))
            if not page:
                break
            replayed += page
            cursor = page[-1].seq
        gap = None
        first_available = replayed[0].seq if replayed else last_seq + 1
        if first_available > after.seq + 1:
            reason = (
                f"more than {self.limits.max_replay} messages were missed"
                if start > after.seq
                else "older messages are past retention"
            )
            gap = HistoryGap(room, after.seq + 1, first_available - 1, reason)
        return replayed, gap, last_seq

    async def leave(self, session: Session, room: str) -> None:
        room = check_room(room)
        if room not in session.rooms:
            raise NotFound(f"not in #{room}")
        self._remove_member(session, room)
        session.offer(Envelope(RoomLeft(room)))

    def _remove_member(self, session: Session, room: str, *, announce: bool = True) -> None:
        session.rooms.discard(room)
        members = self._members.get(room)
        if members is None:
            return
        members.pop(session.id, None)
        if not members:
            del self._members[room]
        elif announce and session.name and session.name not in self.members(room):
            self._announce(room, session.name, joined=False)

    def _announce(
        self, room: str, name: str, *, joined: bool, exclude: Session | None = None
    ) -> None:
        envelope = Envelope(PresenceChange(room, name, joined, datetime.now(UTC)))
        for member in list(self._members.get(room, {}).values()):
            if member is not exclude:
                member.offer(envelope, room)

    def members(self, room: str = "") -> list[str]:
        """Names in the room now, each once, sorted."""
        members = self._members.get(check_room(room), {})
        return sorted({s.name for s in members.values() if s.name})

    async def rooms(self) -> list[RoomInfo]:
        """Rooms with members or history."""
        stored = await self.store.rooms()
        names = sorted(set(stored) | set(self._members))
        return [RoomInfo(n, len(self.members(n)), stored.get(n, 0)) for n in names]

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
    ) -> Appended:
        """Validate, rate-limit, store, number and deliver one message; return it as accepted
        (or, for a repeated key, the original)."""
        self._refuse_if_draining()
        sender, text = check_name(sender), check_text(text)
        room = check_room(room)
        wait = self._rate.wait_time(sender)
        if wait:
            raise LimitExceeded(
                f"slow down: {sender!r} may send {self.limits.rate:g} messages a second; "
                f"retry in {wait:.1f}s",
                retry_after=wait,
            )
        if recipient:
            return self._direct(sender, check_name(recipient), text, action, key)
        # Shielded: a caller that gives up (a cancelled Send) must not leave a message stored
        # but never delivered to the room's live members.
        return await asyncio.shield(self._store_and_deliver(sender, text, room, key, action))

    async def _store_and_deliver(
        self, sender: str, text: str, room: str, key: str, action: bool
    ) -> Appended:
        lock = self._room_locks.get(room)
        if lock is None:
            lock = self._room_locks[room] = asyncio.Lock()
        async with lock:
            appended = await self.store.append(
                id=uuid.uuid4().hex,
                room=room,
                sender=sender,
                text=text,
                sent_at=datetime.now(UTC),
                key=key,
                action=action,
            )
            if not appended.duplicate:
                envelope = Envelope(appended.message)
                for member in list(self._members.get(room, {}).values()):
                    member.offer(envelope, room)
        return appended

    def _direct(self, sender: str, recipient: str, text: str, action: bool, key: str) -> Appended:
        """Deliver a direct message to the recipient's sessions and the sender's own; not
        stored. A repeated key (a client's retry) delivers nothing new, as for room messages."""
        original = self._recent_direct(sender, key) if key else None
        if original is not None:
            return Appended(original, True)
        targets = dict(self._by_name.get(recipient, {}))
        if not targets:
            raise NotFound(f"{recipient!r} is not connected")
        targets.update(self._by_name.get(sender, {}))
        message = Message(
            id=uuid.uuid4().hex,
            room="",
            sender=sender,
            text=text,
            sent_at=datetime.now(UTC),
            seq=0,
            recipient=recipient,
            action=action,
        )
        envelope = Envelope(message)
        for session in targets.values():
            session.offer(envelope)
        if key:
            self._direct_keys[(sender, key)] = message
            if len(self._direct_keys) > _MAX_DIRECT_KEYS:
                self._direct_keys.popitem(last=False)
        return Appended(message, False)

    def _recent_direct(self, sender: str, key: str) -> Message | None:
        expired_before = datetime.now(UTC) - DEDUP_WINDOW
        while self._direct_keys:
            oldest = next(iter(self._direct_keys.values()))
            if oldest.sent_at >= expired_before:
                break
            self._direct_keys.popitem(last=False)
        return self._direct_keys.get((sender, key))

    async def history(
        self,
        room: str,
        *,
        before: int | None = None,
        after: int | None = None,
        limit: int = 50,
        newest_first: bool = False,
    ) -> list[Message]:
        room = check_room(room)
        limit = max(1, min(limit, MAX_HISTORY_PAGE))
        return await self.store.read(
            room, before=before, after=after, limit=limit, newest_first=newest_first
        )

    # -- lifecycle --------------------------------------------------------------------------

    def _refuse_if_draining(self) -> None:
        if self._draining:
            raise ServerDraining("server is shutting down; try again shortly")

    def drain(self) -> None:
        """Refuse new work and ask every session to flush and end (UNAVAILABLE)."""
        self._draining = True
        for session in list(self._sessions.values()):
            session.close(ServerDraining("server is shutting down; reconnect shortly"))

    def session_count(self, room: str = "") -> int:
        return len(self._members.get(check_room(room), {}))
