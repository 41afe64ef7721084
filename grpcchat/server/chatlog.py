"""One log line per accepted message, direct message or relation (edit, delete, reaction).

A record's `text` field is private: log formats leave it out unless asked (`--log-messages`),
and a JSON line of a record that has one never carries its rendered message (see
`grpcchat.cli.logformat`). A direct message's line never shows its text.
"""

from __future__ import annotations

import logging

from grpcchat.core.models import Message, RelationKind

message_log = logging.getLogger("grpcchat.messages")
direct_log = logging.getLogger("grpcchat.direct")
# Its own logger: "grpcchat.messages" records are rendered as chat lines from their args.
relation_log = logging.getLogger("grpcchat.relations")

_RELATION_EVENTS = {
    RelationKind.EDIT: "message_edited",
    RelationKind.DELETE: "message_deleted",
    RelationKind.REACT: "reaction",
    RelationKind.UNREACT: "reaction",
}


def log_accepted(message: Message) -> None:
    """Log a message (or relation) the hub accepted."""
    if message.recipient:
        logger = direct_log
    else:
        logger = message_log if message.relation is None else relation_log
    if not logger.isEnabledFor(logging.INFO):
        return  # `--quiet`: not even the fields of a line nobody writes
    fields: dict[str, object] = {"sender": message.sender, "id": message.id}
    if message.recipient:
        direct_log.info(
            "direct message %s -> %s",
            message.sender,
            message.recipient,
            extra={
                "event": "direct_message",
                "recipient": message.recipient,
                "text": message.text,
                **fields,
            },
        )
        return
    fields.update(room=message.room, seq=message.seq)
    relation = message.relation
    if relation is None:
        if message.reply_to:
            fields["reply_to"] = message.reply_to
        message_log.info(
            '🟢 [%s]: "%s"',
            message.sender,
            message.text,
            extra={"event": "message", "text": message.text, **fields},
        )
        return
    fields.update(event=_RELATION_EVENTS[relation.kind], target=relation.target)
    match relation.kind:
        case RelationKind.EDIT:
            relation_log.info(
                '✏️ [%s] edited %s: "%s"',
                message.sender,
                relation.target,
                message.text,
                extra={"text": message.text, **fields},
            )
        case RelationKind.DELETE:
            relation_log.info("🗑 [%s] deleted %s", message.sender, relation.target, extra=fields)
        case RelationKind.REACT | RelationKind.UNREACT:
            verb = "reacted" if relation.kind is RelationKind.REACT else "took back"
            relation_log.info(
                "[%s] %s %s on %s",
                message.sender,
                verb,
                relation.emoji,
                relation.target,
                extra={"kind": relation.kind.value, "emoji": relation.emoji, **fields},
            )
