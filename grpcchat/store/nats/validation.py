"""What a reply or a relation may be appended as, judged against the room's index as of the
entry it is to follow (`core.relations` says what each may do): no I/O."""

from __future__ import annotations

from grpcchat.core import relations
from grpcchat.core.errors import (
    AlreadyExists,
    CapReached,
    InvalidInput,
    NotFound,
    PermissionDenied,
)
from grpcchat.core.models import Message, RelationKind
from grpcchat.store.nats.codec import Gone, Stored
from grpcchat.store.nats.state import RoomState
from grpcchat.store.nats.window import Window

# What a relation or reply may be refused with (the store's validation, see the contract).
REFUSALS = (NotFound, PermissionDenied, AlreadyExists, CapReached, InvalidInput)


def validate(state: RoomState, draft: Message, head: Stored | None, window: Window) -> Gone | None:
    """Raise why `draft` may not be appended after `head` (what its target or the message it
    replies to is then); what a DELETE erases."""
    window_start = window.start(head.seq if head else 0)
    oldest_kept = window.oldest_kept_us()
    room = draft.room
    if draft.reply_to:
        found = state.target(draft.reply_to, window_start, oldest_kept)
        relations.check_target(found, room, draft.reply_to, kind=None)
    relation = draft.relation
    if relation is None:
        return None
    found = state.target(relation.target, window_start, oldest_kept)
    target = relations.check_target(found, room, relation.target, kind=relation.kind)
    relations.check_relation(target, draft.sender, relation, state.edits(relation.target))
    return state.gone(relation.target) if relation.kind is RelationKind.DELETE else None
