"""What a client hands back: a post as the server accepted it, and the events of a live
session besides the domain's own (messages, joins, gaps, refusals)."""

from __future__ import annotations

from dataclasses import dataclass

from grpcchat.core.models import DEFAULT_ROOM, Event, Message


@dataclass(frozen=True, slots=True)
class Connected:
    """The session is live in `rooms`: everything posted there from now on will arrive."""

    rooms: tuple[str, ...]
    legacy: bool  # the server speaks only the article's Chat stream

    @property
    def room(self) -> str:
        return self.rooms[0] if self.rooms else DEFAULT_ROOM


@dataclass(frozen=True, slots=True)
class Reconnecting:
    """The session lost its stream and retries after `delay` seconds."""

    reason: str
    delay: float


@dataclass(frozen=True, slots=True)
class Sent:
    message: Message
    duplicate: bool  # the caller's key had been used before: `message` is the original


FeedEvent = Event | Connected | Reconnecting

__all__ = ["Connected", "FeedEvent", "Reconnecting", "Sent"]
