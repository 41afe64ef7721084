"""The JSON shape of a message, as `send --json` and `history --json` print it (one per line).

Every object has the message's id, room, position, sender, text and time; `to`, `action`,
`duplicate` (with `deleted` when the original was deleted since), `reply_to` and `relation` only
when they apply. `history --json` adds the current
state to every object (`state=True`): `edited`, `edited_at`, `deleted`, `reactions`, `reply_to`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from grpcchat.core.models import Message


def message_as_json(
    message: Message, duplicate: bool = False, *, state: bool = False
) -> dict[str, object]:
    data: dict[str, object] = {
        "id": message.id,
        "room": message.room,
        "seq": message.seq,
        "epoch": message.epoch,
        "sender": message.sender,
        "text": message.text,
        "sent_at": message.sent_at.isoformat(),
    }
    if message.recipient:
        data["to"] = message.recipient
    if message.action:
        data["action"] = True
    if duplicate:
        data["duplicate"] = True
        if message.deleted and not state:  # a repeated key whose original was deleted since
            data["deleted"] = True
    if message.reply_to or state:
        data["reply_to"] = message.reply_to
    if message.relation is not None:
        relation: dict[str, str] = {
            "kind": message.relation.kind.value,
            "target": message.relation.target,
        }
        if message.relation.emoji:
            relation["emoji"] = message.relation.emoji
        data["relation"] = relation
    if state:
        edited_at = message.edited_at
        data["edited"] = edited_at is not None
        data["edited_at"] = edited_at.isoformat() if edited_at is not None else None
        data["deleted"] = message.deleted
        # One key per emoji, in the order each was first used (JSON objects keep it).
        data["reactions"] = {r.emoji: list(r.names) for r in message.reactions}
    return data
