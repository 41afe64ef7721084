"""Read markers: per user and room, the seq up to which the user has read, kept by the store
(so every node and every later session shares it) and told at once to the user's other
sessions here that are in the room (other nodes' sessions learn it on their next join).

Whose marker: the authenticated user, else the session's name (or the name a unary call
gives): without authentication names are not owned, as for everything else.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from grpcchat.core.errors import InvalidInput
from grpcchat.core.history import HistoryStore
from grpcchat.core.models import Envelope, ReadMarker
from grpcchat.core.session import Session
from grpcchat.core.validation import check_name

# A seq a client can send that still fits every engine's integer column (SQLite's is signed
# 64-bit); the store clamps it to the room's last seq anyway.
MAX_SEQ = (1 << 63) - 1


class ReadMarkers:
    def __init__(
        self, store: HistoryStore, sessions_of: Callable[[str], Iterable[Session]]
    ) -> None:
        self._store = store
        self._sessions_of = sessions_of

    async def mark(self, user: str, room: str, seq: int, *, told: Session | None = None) -> int:
        """Move `user`'s marker in `room` (both checked names, see `user`) up to `seq`; the
        marker afterwards. Every session of the user here that is in the room gets a
        ReadMarker event, except `told` (the session that asked: it knows)."""
        marker = await self._store.mark_read(user, room, min(max(seq, 0), MAX_SEQ))
        envelope = Envelope(ReadMarker(room, marker))
        for session in list(self._sessions_of(user)):
            if session is not told and room in session.rooms:
                # Held behind a join in progress, so it follows that join's RoomJoined (whose
                # read_seq may be older). Optional, like a presence notice: without
                # authentication anyone may mark for any name, and that must never fill a
                # session's queue and cut it off; a session that lags reads the marker afresh
                # on its next join.
                session.offer_optional(envelope, room)
        return marker

    async def marker(self, user: str, room: str) -> int:
        """`user`'s marker in `room` (0 for no user: an anonymous session reads nothing)."""
        return await self._store.read_marker(user, room) if user else 0

    @staticmethod
    def user(name: str) -> str:
        """Whose marker a call moves or counts: a valid name, or InvalidInput."""
        if not name.strip():
            raise InvalidInput(
                "read markers belong to a user: give a name (or authenticate with a token)"
            )
        return check_name(name)
