"""Who lags behind, counted by principal: the authenticated user, or the client's address.

Pushback (see `pressure`) holds publishers back when a majority lags. Counted by session, one
address that opens its limit of sessions and never reads them outvotes every other reader of
the server: all posts are refused until the stall check cuts those sessions off, and then it
opens them again. Counted by principal it is one voice, and its sessions are simply slow
consumers, cut off when their queues overflow. A principal lags when most of its own
sessions do, so a load from one address (a benchmark, one NAT) still counts as it always did.
"""

from __future__ import annotations


class LagTally:
    __slots__ = ("_lagging", "_sessions", "lagging", "lagging_principals", "sessions")

    def __init__(self) -> None:
        # principal -> its sessions counted here, and (only while nonzero) those that lag.
        self._sessions: dict[str, int] = {}
        self._lagging: dict[str, int] = {}
        self.sessions = 0
        self.lagging = 0
        # Principals most of whose sessions lag.
        self.lagging_principals = 0

    @property
    def principals(self) -> int:
        return len(self._sessions)

    def add(self, principal: str, lagging: bool) -> None:
        before = self._lags(principal)
        self._sessions[principal] = self._sessions.get(principal, 0) + 1
        self.sessions += 1
        if lagging:
            self._count_lag(principal, 1)
        self.lagging_principals += self._lags(principal) - before

    def remove(self, principal: str, lagging: bool) -> None:
        before = self._lags(principal)
        left = self._sessions[principal] - 1
        if left:
            self._sessions[principal] = left
        else:
            del self._sessions[principal]
        self.sessions -= 1
        if lagging:
            self._count_lag(principal, -1)
        self.lagging_principals += self._lags(principal) - before

    def lag_changed(self, principal: str, lagging: bool) -> None:
        """One of the principal's sessions here started (True) or stopped lagging."""
        before = self._lags(principal)
        self._count_lag(principal, 1 if lagging else -1)
        self.lagging_principals += self._lags(principal) - before

    def majority_lags(self) -> bool:
        return self.lagging_principals * 2 > len(self._sessions)

    def _count_lag(self, principal: str, delta: int) -> None:
        self.lagging += delta
        count = self._lagging.get(principal, 0) + delta
        if count:
            self._lagging[principal] = count
        else:
            del self._lagging[principal]

    def _lags(self, principal: str) -> int:
        return int(self._lagging.get(principal, 0) * 2 > self._sessions.get(principal, 0))
