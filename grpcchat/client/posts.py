"""What a post asks the server, checked before it is sent: plain messages, replies and relations
(edit, delete, react, unreact), shared by the unary `Send` and the session stream.

A server that cannot carry a reply or a relation (the article's, or a grpcchat server older than
conversations) must not get one as a plain message: the article's gets none at all, and an older
grpcchat server, which ignores the fields it does not know, is caught by its answer."""

from __future__ import annotations

import os

from grpcchat.core.errors import InvalidInput, RemoteError
from grpcchat.core.models import Message, Relation, RelationKind
from grpcchat.core.validation import (
    check_emoji,
    check_key,
    check_message_id,
    check_name,
    check_room,
    check_text,
)
from grpcchat.gen.chat.v1 import chat_service_pb2 as pb
from grpcchat.wire import codec

# What each kind of post is called in "the server at X does not support ...".
_FEATURES = {
    RelationKind.EDIT: "edits",
    RelationKind.DELETE: "deletes",
    RelationKind.REACT: "reactions",
    RelationKind.UNREACT: "reactions",
}


def send_request(
    sender: str,
    text: str,
    room: str,
    *,
    key: str = "",
    recipient: str = "",
    action: bool = False,
    reply_to: str = "",
    relation: Relation | None = None,
) -> pb.SendRequest:
    """The request for one post, its input checked as the server will check it (InvalidInput).

    A relation changes an earlier message of `room`: an edit's `text` is the new text; a delete
    or a reaction has no text (`text` must be empty) and a reaction names its emoji."""
    request = pb.SendRequest(
        sender=check_name(sender),
        room=check_room(room),
        # As random as a uuid4 (uuid's import costs `grpcchat send` 2 ms of start-up).
        key=check_key(key) if key else os.urandom(16).hex(),
        recipient=check_name(recipient, "recipient") if recipient else "",
        action=action,
        reply_to=check_message_id(reply_to) if reply_to else "",
    )
    if relation is None or relation.kind is RelationKind.EDIT:
        request.text = check_text(text)
    elif text:
        raise InvalidInput(f"a {relation.kind.value} has no text")
    if relation is not None:
        check_message_id(relation.target)
        if relation.kind in (RelationKind.REACT, RelationKind.UNREACT):
            check_emoji(relation.emoji, new=relation.kind is RelationKind.REACT)
        request.relation.CopyFrom(codec.relation_to_proto(relation))
    return request


def feature(request: pb.SendRequest) -> str | None:
    """What of conversations `request` needs of the server ("edits", "replies"...), if any."""
    if request.HasField("relation"):
        relation = codec.relation_from_proto(request.relation)
        return _FEATURES[relation.kind] if relation is not None else "relations"
    if request.action:  # the article's stream would carry the text as said, not done
        return "actions (/me)"
    return "replies" if request.reply_to else None


def unsupported(what: str, addr: str, why: str = "") -> RemoteError:
    """The error for a server that does not do `what` ("edits", "typing notices"...)."""
    return RemoteError("UNIMPLEMENTED", f"the server at {addr} does not support {what}{why}")


def check_accepted(request: pb.SendRequest, message: Message, addr: str) -> Message:
    """`message` as the server accepted `request`; a server that took a relation, a reply or
    an action as a plain message (it predates them) is told as one that does not support it."""
    dropped = (
        feature(request) if request.HasField("relation") and message.relation is None else None
    )
    if request.reply_to and not message.reply_to:
        dropped = "replies"
    elif request.action and not message.action:
        dropped = "actions (/me)"
    if dropped is not None:
        raise unsupported(dropped, addr, ": it posted the text as a new message")
    return message
