"""What a post that names another message (an edit, delete or reaction, or a reply) must look
like before the store sees it. Everything that needs the target itself (that it exists in the
room, who wrote it, whether it was deleted, its per-message bounds) is the store's, checked
atomically in `append` (see `HistoryStore` and `relations`)."""

from __future__ import annotations

from grpcchat.core.errors import InvalidInput, NotFound
from grpcchat.core.models import Relation, RelationKind
from grpcchat.core.validation import check_emoji, check_message_id, check_text

_NEEDS_EMOJI = (RelationKind.REACT, RelationKind.UNREACT)


def check_relation(
    relation: Relation, text: str, *, recipient: str, reply_to: str, action: bool = False
) -> str:
    """The text to store with `relation` (an edit's new text, else ""), or raise why the
    request is wrong as such."""
    if action:
        raise InvalidInput(
            f"a {relation.kind.value} is not an action: whether a message is one is set when "
            "it is sent"
        )
    if recipient:
        raise NotFound(
            "direct messages are not kept, so they cannot be edited, deleted or reacted to"
        )
    if relation.kind is RelationKind.EDIT:
        text = check_text(text)
    elif text:
        raise InvalidInput(f"a {relation.kind.value} carries no text")
    if relation.kind in _NEEDS_EMOJI:
        check_emoji(relation.emoji, new=relation.kind is RelationKind.REACT)
    elif relation.emoji:
        raise InvalidInput(f"a {relation.kind.value} takes no emoji")
    check_message_id(relation.target)
    if reply_to:
        raise InvalidInput(f"a {relation.kind.value} is not a reply: leave reply_to empty")
    return text


def check_reply(reply_to: str, *, recipient: str) -> str:
    """The id a message replies to ("" for none), or raise why it cannot name it."""
    if not reply_to:
        return ""
    if recipient:
        raise InvalidInput(
            "a direct message cannot be a reply: replies name a message of the same room"
        )
    return check_message_id(reply_to)
