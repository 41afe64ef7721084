"""Typing notices: "bob is typing" in a room, never stored, per node.

A notice goes to the room's members here except the typist's own sessions (their client knows),
offered like presence notices (`Session.offer_optional`): at most half a queue, dropped for a
session that full, never evicting anyone. It expires on its own after EXPIRES_IN (clients
refresh every few seconds while typing), and a typist that stops, leaves the room or goes
away is told to the others at once, so "bob is typing" disappears without waiting.

Starts are rate-limited per principal (RATE a second, BURST saved up). A stop is never refused:
it either ends a notice whose start was counted, or does nothing, so it costs no more than the
starts did.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from grpcchat.core.errors import LimitExceeded, NotFound
from grpcchat.core.models import Envelope, Typing
from grpcchat.core.ratelimit import RateLimiter, retry_in
from grpcchat.core.rooms import Room
from grpcchat.core.session import Session

EXPIRES_IN = 6.0
RATE = 2.0
BURST = 4.0


class Typists:
    def __init__(
        self,
        room_of: Callable[[str], Room | None],
        *,
        rate: float = RATE,
        burst: float = BURST,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._room_of = room_of
        self._per_second = rate
        self._rate = RateLimiter(rate, burst)
        self._clock = clock
        # (session id, room) -> when that session's latest start expires. One entry per room a
        # session typed in, gone when it stops, leaves or closes: bounded by memberships.
        self._typing: dict[tuple[int, str], float] = {}

    def notice(self, session: Session, room: str, active: bool) -> None:
        """`session` started (or refreshed) or stopped typing in `room` (a checked name)."""
        if room not in session.rooms:
            raise NotFound(f"not in #{room}: join it to type there")
        key = (session.id, room)
        if not active:
            if self._typing.pop(key, 0.0) > self._clock():
                self._tell(session, room, active=False)
            return
        wait = self._rate.wait_time(session.principal)
        if wait:
            raise LimitExceeded(
                f"slow down: at most {self._per_second:g} typing notices a second; "
                + retry_in(wait),
                retry_after=wait,
            )
        self._typing[key] = self._clock() + EXPIRES_IN
        self._tell(session, room, active=True)

    def left(self, session: Session, room: str) -> None:
        """`session` left `room` (or went away): if it was typing there, the others see it stop."""
        if self._typing.pop((session.id, room), 0.0) > self._clock():
            self._tell(session, room, active=False)

    def _tell(self, typist: Session, room: str, *, active: bool) -> None:
        members = self._room_of(room)
        if members is None or not typist.name:
            return
        if not active and self._still_typing(members, typist.name):
            return  # another session of the same user (with auth) types on there
        envelope = Envelope(Typing(room, typist.name, active, EXPIRES_IN))
        for session in members.sessions.values():
            if session.name != typist.name:
                session.offer_optional(envelope, room)

    def _still_typing(self, members: Room, name: str) -> bool:
        now = self._clock()
        return any(
            self._typing.get((session.id, members.name), 0.0) > now
            for session in members.names.get(name, {}).values()
        )

    def __len__(self) -> int:
        return len(self._typing)
