"""One room's live membership, kept incrementally: who is in it (by session and by name), who of
them lags behind, and a sorted member list rebuilt only after it changed."""

from __future__ import annotations

import itertools
from bisect import bisect_right

from grpcchat.core.lagtally import LagTally
from grpcchat.core.session import Session


class Room:
    __slots__ = ("_sorted", "lag", "name", "names", "sessions", "shared")

    def __init__(self, name: str) -> None:
        self.name = name
        self.sessions: dict[int, Session] = {}
        # name -> that name's sessions here (several only for one authenticated user).
        self.names: dict[str, dict[int, Session]] = {}
        # Who of this room's sessions has a queue more than half full.
        self.lag = LagTally()
        # Names here that other nodes have in the room too (kept by the hub: see `cluster`).
        self.shared = 0
        self._sorted: list[str] | None = None

    def __len__(self) -> int:
        return len(self.sessions)

    @property
    def member_count(self) -> int:
        """Distinct names in the room."""
        return len(self.names)

    def add(self, session: Session) -> bool:
        """Add a session; True when its name was not in the room before."""
        self.sessions[session.id] = session
        self.lag.add(session.principal, session.lagging)
        if not session.name:
            return False
        same_name = self.names.get(session.name)
        if same_name is None:
            self.names[session.name] = {session.id: session}
            self._sorted = None
            return True
        same_name[session.id] = session
        return False

    def remove(self, session: Session) -> bool:
        """Remove a session; True when it was the last of its name here."""
        if self.sessions.pop(session.id, None) is None:
            return False
        self.lag.remove(session.principal, session.lagging)
        same_name = self.names.get(session.name)
        if same_name is None:
            return False
        same_name.pop(session.id, None)
        if same_name:
            return False
        del self.names[session.name]
        self._sorted = None
        return True

    def sorted_names(self) -> list[str]:
        if self._sorted is None:
            self._sorted = sorted(self.names)
        return self._sorted

    def sample(self, limit: int) -> tuple[str, ...]:
        """Up to `limit` names, sorted (all of them in a room no bigger than `limit`)."""
        if len(self.names) <= limit:
            return tuple(self.sorted_names())
        return tuple(sorted(itertools.islice(self.names, limit)))

    def page(self, after: str, limit: int) -> list[str]:
        """Sorted names after `after`, at most `limit`."""
        names = self.sorted_names()
        start = bisect_right(names, after) if after else 0
        return names[start : start + limit]
