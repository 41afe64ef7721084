"""The JSON shape of a message, as `send --json` and `history --json` print it (one per line)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from grpcchat.core.models import Message


def message_as_json(message: Message, duplicate: bool = False) -> dict[str, object]:
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
    return data
