"""What a relation (edit, delete, reaction) may do to its target, and what it makes of it.

One definition for every history engine, which validates and applies relations atomically in
`append` (see `HistoryStore`), and for clients that follow a room live and apply the relation
entries they receive to what they show. Applying is idempotent, so a client that saw a message's
current state in a replay and then the relation entry too shows the same thing.
"""

from __future__ import annotations

from dataclasses import replace

from grpcchat.core.errors import (
    AlreadyExists,
    CapReached,
    InvalidInput,
    NotFound,
    PermissionDenied,
)
from grpcchat.core.history import MAX_DISTINCT_EMOJI, MAX_EDITS, MAX_REACTIONS
from grpcchat.core.models import Message, Reaction, Relation, RelationKind

_VERBS = {
    RelationKind.EDIT: "edit",
    RelationKind.DELETE: "delete",
    RelationKind.REACT: "react to",
    RelationKind.UNREACT: "take back a reaction to",
}
# What a relation entry is, said of one named where a message was expected.
_ENTRIES = {
    RelationKind.EDIT: "an edit",
    RelationKind.DELETE: "a deletion",
    RelationKind.REACT: "a reaction",
    RelationKind.UNREACT: "a reaction taken back",
}


def check_target(
    target: Message | None, room: str, target_id: str, *, kind: RelationKind | None
) -> Message:
    """The message a relation of `kind` (None: a reply) names, if it may be named at all: a
    retained entry of `room` that is no relation itself. Engines pass what they found under the
    id (None: nothing, or nothing retained)."""
    if target is None or target.room != room or target.recipient:
        raise NotFound(f"no message {target_id} in #{room} (it may be past retention)")
    if target.relation is not None:
        what = "reply to" if kind is None else _VERBS[kind]
        raise InvalidInput(
            f"{target_id} is {_ENTRIES[target.relation.kind]}, not a message to {what}"
        )
    return target


def check_relation(target: Message, sender: str, relation: Relation, edits: int = 0) -> None:
    """Raise why `sender` may not apply `relation` to `target` now (its current state);
    `edits` is how many times it was edited already."""
    verb = _VERBS[relation.kind]
    if target.deleted:
        raise NotFound(f"message {target.id} was deleted: nothing to {verb}")
    if relation.kind in (RelationKind.EDIT, RelationKind.DELETE) and sender != target.sender:
        raise PermissionDenied(f"only {target.sender} may {verb} their message {target.id}")
    if relation.kind is RelationKind.EDIT and edits >= MAX_EDITS:
        raise CapReached(f"message {target.id} was edited {MAX_EDITS} times: no more edits")
    if relation.kind is RelationKind.REACT:
        reaction = _find(target.reactions, relation.emoji)
        if reaction is not None and sender in reaction.names:
            raise AlreadyExists(f"{sender} already reacted {relation.emoji} to {target.id}")
        if reaction is None and len(target.reactions) >= MAX_DISTINCT_EMOJI:
            raise CapReached(f"message {target.id} has {MAX_DISTINCT_EMOJI} emoji already")
        if sum(len(r.names) for r in target.reactions) >= MAX_REACTIONS:
            raise CapReached(f"message {target.id} has {MAX_REACTIONS} reactions already")
    if relation.kind is RelationKind.UNREACT:
        reaction = _find(target.reactions, relation.emoji)
        if reaction is None or sender not in reaction.names:
            raise NotFound(f"{sender} has no {relation.emoji} reaction on {target.id}")


def apply(target: Message, entry: Message) -> Message:
    """`target`'s state once the relation `entry` (which names it) is applied."""
    relation = entry.relation
    assert relation is not None
    assert relation.target == target.id
    if target.deleted:
        return target
    match relation.kind:
        case RelationKind.EDIT:
            return replace(target, text=entry.text, edited_at=entry.sent_at)
        case RelationKind.DELETE:
            return replace(target, text="", deleted=True, reactions=())
        case RelationKind.REACT:
            return replace(
                target, reactions=_reacted(target.reactions, relation.emoji, entry.sender)
            )
        case RelationKind.UNREACT:
            return replace(
                target, reactions=_unreacted(target.reactions, relation.emoji, entry.sender)
            )


def erased(entry: Message) -> Message:
    """An EDIT entry of a message that was deleted since: its text goes too."""
    return replace(entry, text="")


def _find(reactions: tuple[Reaction, ...], emoji: str) -> Reaction | None:
    return next((reaction for reaction in reactions if reaction.emoji == emoji), None)


def _reacted(reactions: tuple[Reaction, ...], emoji: str, name: str) -> tuple[Reaction, ...]:
    if _find(reactions, emoji) is None:
        return (*reactions, Reaction(emoji, (name,)))
    return tuple(
        Reaction(r.emoji, r.names if name in r.names else (*r.names, name))
        if r.emoji == emoji
        else r
        for r in reactions
    )


def _unreacted(reactions: tuple[Reaction, ...], emoji: str, name: str) -> tuple[Reaction, ...]:
    kept = (
        Reaction(r.emoji, tuple(n for n in r.names if n != name)) if r.emoji == emoji else r
        for r in reactions
    )
    return tuple(r for r in kept if r.names)
