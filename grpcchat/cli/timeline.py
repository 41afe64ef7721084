"""What `join` prints for the messages of its rooms, as lines: messages in their current state,
and for each relation entry (an edit, a delete, a reaction) the message it changes, shown again
as it is now, since a terminal cannot rewrite lines printed long ago.

A room's first join replays recent history before its `RoomJoined`: that replay is held back
until the `RoomJoined` says where the user's read marker is, so an `── unread ──` divider can
go before the first message not read yet. Relation entries a replay carries are already applied
to the messages the same replay read (History and replay return current state), so they print
nothing; those that change a message shown before (the edit missed while reconnecting) print it
again, once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from itertools import count

from rich.text import Text

from grpcchat.cli import render
from grpcchat.cli.roomlog import RoomLog
from grpcchat.core.models import Message, RelationKind, RoomJoined


class Timeline:
    """The rooms' messages as shown to `me`. `handles`: lines start with the message's seq (a
    terminal); `unread`: mark where unread messages start (a person reads)."""

    def __init__(
        self, me: str, *, several: Callable[[str], bool], handles: bool, unread: bool
    ) -> None:
        self.me = me
        # Whether lines of `room` carry the room's name (the session is in several rooms).
        self._several = several
        self.handles = handles
        self.unread = unread
        self._logs: dict[str, RoomLog] = {}
        self._replays = count(1)
        # Rooms whose join is replaying history, and which replay it is.
        self._replaying: dict[str, int] = {}
        # Rooms on their first join: the replay is held back until RoomJoined, and dimmed.
        self._held: dict[str, list[Message]] = {}
        # The highest seq shown per room (messages and relation entries).
        self.latest: dict[str, int] = {}

    def log(self, room: str) -> RoomLog:
        if room not in self._logs:
            self._logs[room] = RoomLog()
        return self._logs[room]

    # -- joins ------------------------------------------------------------------------------

    def joining(self, room: str, *, first: bool) -> None:
        """A join of `room` was asked for: its replay follows (held back on a `first` join)."""
        self._replaying[room] = next(self._replays)
        if first:
            self._held[room] = []

    def reconnecting(self, rooms: Iterable[str]) -> None:
        """The stream is lost: on the next one each room replays what was missed."""
        for room in rooms:
            self._replaying[room] = next(self._replays)

    def joined(self, joined: RoomJoined) -> list[Text]:
        """The join is complete: the held back replay, with the unread divider."""
        held = self._held.pop(joined.room, None)
        lines: list[Text] = []
        if held is not None:
            divider = self._first_unread(held, joined.read_seq) if self.unread else None
            for message in held:
                if message is divider:
                    lines.append(render.render_unread())
                unread = divider is not None and message.seq >= divider.seq
                lines += self._show(message, replayed=not unread)
        self._replaying.pop(joined.room, None)
        return lines

    def unjoined(self, room: str) -> None:
        """No RoomJoined will come for `room`: its join was refused, or the server is the
        article's (no replay, nothing held)."""
        self._held.pop(room, None)
        self._replaying.pop(room, None)

    def unread_before_replay(self, joined: RoomJoined) -> int | None:
        """The seq before which entries were not replayed although the user has not read them
        (more arrived while away than the replay holds), or None. What `join` shows must start
        at the first unread message: the marker moves up to what is shown, and would pass them
        unseen."""
        held = self._held.get(joined.room)
        if not self.unread or held is None:
            return None
        before = held[0].seq if held else joined.position.seq + 1  # (--history 0: none held)
        return before if 0 < joined.read_seq < before - 1 else None

    def add_unread(self, room: str, earlier: list[Message]) -> None:
        """`earlier` (oldest first) goes before the held replay of `room`."""
        if (held := self._held.get(room)) is not None:
            held[:0] = earlier

    def _first_unread(self, held: list[Message], read_seq: int) -> Message | None:
        # What `unread` counts: others' messages, not changes of them, nor deleted ones.
        return next(
            (
                m
                for m in held
                if m.seq > read_seq
                and m.relation is None
                and not m.deleted
                and m.sender != self.me
                and m.room
            ),
            None,
        )

    def replaced(self, room: str) -> None:
        """`room`'s whole history was replaced (a new epoch): its seqs start again, so the
        messages shown no longer answer to their handles, nor to "your last message"."""
        self._logs.pop(room, None)
        self.latest.pop(room, None)

    # -- messages ---------------------------------------------------------------------------

    def message(self, message: Message) -> list[Text]:
        """The lines to print for `message` now (none while its room's first replay is held)."""
        held = self._held.get(message.room)
        # Only a message with a position is replayed (the article's server has none).
        if held is not None and message.seq and not message.recipient:
            held.append(message)
            return []
        return self._show(message, replayed=False)

    def sent(self, message: Message) -> None:
        """`me` posted `message`: keep it, so `/edit` finds it even before it comes back."""
        if message.room and message.relation is None and message.seq:
            log = self.log(message.room)
            if log.at(message.seq) is None:
                log.add(message)

    def history(self, messages: list[Message]) -> list[Text]:
        """Lines for messages of one room read with History (current state, and no room
        label: the user asked for that room), kept like shown ones."""
        lines: list[Text] = []
        for message in messages:
            self.log(message.room).add(message)
            lines.append(self._post(message, replayed=True, labelled=False))
        return lines

    def _show(self, message: Message, *, replayed: bool) -> list[Text]:
        if message.recipient or not message.seq:
            return [self._post(message, replayed=replayed)]
        room = message.room
        self.latest[room] = max(self.latest.get(room, 0), message.seq)
        replay = self._replaying.get(room)
        log = self.log(room)
        if message.relation is None:
            log.add(message, replay or 0)
            return [self._post(message, replayed=replayed)]
        # A relation entry: show what it changed, unless this replay read it changed already.
        target = message.relation.target
        kept_from = log.replay_of(target)
        if kept_from is None:
            return [] if replay is not None else [render.render_unseen_change(message)]
        if replay is not None and kept_from == replay:
            return []
        changed = log.apply(message)
        return [self._changed(changed, message.relation.kind)] if changed is not None else []

    def _changed(self, message: Message, kind: RelationKind) -> Text:
        if kind in (RelationKind.REACT, RelationKind.UNREACT) and not message.deleted:
            return render.render_reactions(message, handle=self.handles, changed=True)
        return render.render_message(
            message, show_room=self._several(message.room), handle=self.handles
        )

    def _post(self, message: Message, *, replayed: bool, labelled: bool = True) -> Text:
        quoted = None
        if message.reply_to:
            quoted = self.log(message.room).by_id(message.reply_to)
        return render.render_post(
            message,
            quoted=quoted,
            show_room=labelled and bool(message.room) and self._several(message.room),
            replayed=replayed,
            handle=self.handles,
        )
