"""When the chat is behind: which sessions lag, whether a room (or the whole server) is behind,
and which lagging sessions are stuck rather than slow.

A session lags while more than half of its queue is waiting (see `Session`). A room is behind
when a majority of its principals lag, the server when a majority of all do (a principal lags
when most of its sessions do: see `LagTally`); then the hub pushes back on publishers instead
of letting healthy readers overflow. Below MIN_PUSHBACK_SESSIONS sessions a lagging one is
simply slow: it overflows and resumes, and is never a reason to hold publishers back.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from grpcchat.core.lagtally import LagTally
from grpcchat.core.rooms import Room
from grpcchat.core.session import Session

MIN_PUSHBACK_SESSIONS = 3
# What a refused publisher is told to wait, and how often a held-back Chat stream looks again.
BUSY_RETRY = 0.05
# A lagging session whose writer has not finished a write for this long is stuck, not slow.
STALL_TIMEOUT = 10.0
# Looking for stuck sessions scans the server: at most this often.
STALL_CHECK_INTERVAL = 1.0


class Pressure:
    def __init__(self, sessions: Mapping[int, Session], rooms: Mapping[str, Room]) -> None:
        self._sessions = sessions
        self._rooms = rooms
        # Every registered session, server-wide.
        self._server = LagTally()
        self._stall_check = 0.0

    @property
    def lagging(self) -> int:
        """Sessions whose queue is more than half full, server-wide."""
        return self._server.lagging

    def register(self, session: Session) -> None:
        self._server.add(session.principal, session.lagging)

    def lag_changed(self, session: Session) -> None:
        """A registered session started or stopped lagging: count it in its rooms too."""
        if session.id not in self._sessions:
            return
        self._server.lag_changed(session.principal, session.lagging)
        for name in session.rooms:
            room = self._rooms.get(name)
            if room is not None and session.id in room.sessions:
                room.lag.lag_changed(session.principal, session.lagging)

    def forget(self, session: Session) -> None:
        """A registered session is leaving the server (its rooms uncount it themselves)."""
        self._server.remove(session.principal, session.lagging)

    def behind(self, room: Room | None) -> bool:
        """Whether most principals of the room, or of the server, lag behind."""
        if room is not None and len(room) >= MIN_PUSHBACK_SESSIONS and room.lag.majority_lags():
            return True
        return self._server.sessions >= MIN_PUSHBACK_SESSIONS and self._server.majority_lags()

    def stuck(self) -> list[Session]:
        """Lagging sessions whose writer made no progress for STALL_TIMEOUT: clients that
        stopped reading. Empty when asked again within STALL_CHECK_INTERVAL.

        Every session of the server, whatever room a refusal was for: the server is behind
        when most of all its principals lag, so a few stuck in one room can hold posts to every
        other room back, and one room's checks must not use up another's (a scan of 10,000
        sessions is a millisecond, once a second)."""
        now = time.monotonic()
        if now - self._stall_check < STALL_CHECK_INTERVAL:
            return []
        self._stall_check = now
        stalled_since = now - STALL_TIMEOUT
        return [s for s in self._sessions.values() if s.lagging and s.last_progress < stalled_since]
