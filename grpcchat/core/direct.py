"""Direct messages: delivered live to the recipient's sessions and the sender's own, never
stored. Because they are not stored, their idempotency keys are remembered here, for the same
dedup window as room messages and at most `capacity` of them.

Across nodes (see `cluster`), a message is also forwarded to the other nodes, which deliver it
to their sessions of either name and remember its key too, so a retry on another node (a client
that failed over) is still recognised."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta

from grpcchat.core.errors import NotFound
from grpcchat.core.history import Appended
from grpcchat.core.ids import new_message_id
from grpcchat.core.models import Envelope, Message
from grpcchat.core.session import Session

DEFAULT_CAPACITY = 100_000


class DirectMessages:
    def __init__(
        self,
        sessions_of: Callable[[str], Iterable[Session]],
        dedup_window: timedelta,
        capacity: int = DEFAULT_CAPACITY,
        *,
        elsewhere: Callable[[str], bool] = lambda name: False,
        forward: Callable[[Message, str], None] | None = None,
    ) -> None:
        self._sessions_of = sessions_of
        # Whether a name has sessions on another node, and how a message reaches those.
        self._elsewhere = elsewhere
        self._forward = forward
        self._window = dedup_window
        self._capacity = capacity
        self._keys: OrderedDict[tuple[str, str], Message] = OrderedDict()

    def send(self, sender: str, recipient: str, text: str, action: bool, key: str) -> Appended:
        """Deliver one direct message; a repeated key (a client's retry) delivers nothing new
        and returns the original, as for room messages."""
        original = self._recent(sender, key) if key else None
        if original is not None:
            return Appended(original, True)
        if not any(True for _ in self._sessions_of(recipient)) and not self._elsewhere(recipient):
            raise NotFound(f"{recipient!r} is not connected")
        message = Message(
            id=new_message_id(),
            room="",
            sender=sender,
            text=text,
            sent_at=datetime.now(UTC),
            seq=0,
            recipient=recipient,
            action=action,
        )
        self.receive(message, key)
        if self._forward is not None:
            self._forward(message, key)
        return Appended(message, False)

    def receive(self, message: Message, key: str) -> None:
        """Deliver a message (sent here or on another node) to the sessions here of its
        recipient and its sender, once each, and remember its key. A key known already is the
        same send posted on two nodes at once (a client that failed over while its first
        attempt was on its way): each node's sessions keep the copy they got first."""
        if key and self._recent(message.sender, key) is not None:
            return
        targets = {session.id: session for session in self._sessions_of(message.recipient)}
        targets.update((session.id, session) for session in self._sessions_of(message.sender))
        envelope = Envelope(message)
        for session in targets.values():
            session.offer(envelope)
        if key:
            self._keys[(message.sender, key)] = message
            if len(self._keys) > self._capacity:
                self._keys.popitem(last=False)

    def _recent(self, sender: str, key: str) -> Message | None:
        expired_before = datetime.now(UTC) - self._window
        while self._keys:
            oldest = next(iter(self._keys.values()))
            if oldest.sent_at >= expired_before:
                break
            self._keys.popitem(last=False)
        return self._keys.get((sender, key))
