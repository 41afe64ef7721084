"""What a client hands back: a post as the server accepted it, and the events of a live
session besides the domain's own (messages, joins, gaps, refusals)."""

from __future__ import annotations

from dataclasses import field

from grpcchat.core.models import DEFAULT_ROOM, Event, Message
from grpcchat.core.records import record


@record
class Connected:
    """The session is live in `rooms`: everything posted there from now on will arrive."""

    rooms: tuple[str, ...]
    legacy: bool  # the server speaks only the article's Chat stream
    # The server's address (of the client's --addr list); not part of equality.
    addr: str = field(default="", compare=False)

    @property
    def room(self) -> str:
        return self.rooms[0] if self.rooms else DEFAULT_ROOM


@record
class Reconnecting:
    """The session lost its stream and retries after `delay` seconds, at `addr` (the next
    address of the client's list, or the same one when it has one)."""

    reason: str
    delay: float
    addr: str = field(default="", compare=False)


@record
class Sent:
    message: Message
    duplicate: bool  # the caller's key had been used before: `message` is the original


FeedEvent = Event | Connected | Reconnecting

__all__ = ["Connected", "FeedEvent", "Reconnecting", "Sent"]
