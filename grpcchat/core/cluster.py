"""Presence and direct messages across nodes: the `Cluster` an engine may offer (the design's
Presence, and the Broker for what is never stored), and the `Roster` of the other nodes'
members that the hub reads.

Room messages cross nodes through history (`feed`); who is where, and direct messages, are
never stored, so a node tells the others itself: it announces each change of its own members
(a name's first session in a room, or on the node at all, and its last), and the engine keeps
what every other node announced in the hub's `Roster`. A node that stops announcing (killed,
cut off) is forgotten after the engine's time-to-live, and its members leave.

The single-process engines (memory, SQLite) offer no `Cluster`; the hub then knows only its own
sessions, as it always has.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from grpcchat.core.models import Message
from grpcchat.core.records import record

# The "room" of a change that is about a name's sessions on a node at all (who can receive
# direct messages), not about a room.
CONNECTED = ""


@record
class MemberChange:
    """`name` entered (`joined`) or left `room` (CONNECTED: the node)."""

    room: str
    name: str
    joined: bool


class LocalNode(Protocol):
    """What an engine needs of the hub to share it with other nodes."""

    @property
    def roster(self) -> Roster: ...

    def members(self) -> dict[str, list[str]]:
        """This node's names by room, CONNECTED included: what other nodes are sent when they
        ask for the whole picture (a new node, or one that missed an announcement)."""
        ...

    def remote_changed(self, changes: list[MemberChange]) -> None:
        """Names entered or left rooms on other nodes (as a whole: see `Roster`)."""
        ...

    def remote_direct(self, message: Message, key: str) -> None:
        """A direct message sent on another node (with its idempotency key, if any)."""
        ...


@runtime_checkable
class Cluster(Protocol):
    async def share(self, node: LocalNode) -> None:
        """Announce this node to the others and keep `node.roster` up to date with theirs,
        until the engine closes (then return). Raises StoreError when the connection breaks;
        called again, it starts over (the others' rosters are asked for again)."""
        ...

    def announce(self, changes: list[MemberChange]) -> None:
        """Tell the other nodes about changes of this node's members (never blocks)."""
        ...

    def send_direct(self, message: Message, key: str) -> None:
        """Hand a direct message to the other nodes (never blocks; live only, never stored)."""
        ...


@dataclass(slots=True)
class _Node:
    rooms: dict[str, set[str]] = field(default_factory=dict)


class Roster:
    """The names other nodes have, by room: each node's announced set, and how many nodes
    have each name, so a name leaves a room (for this node) only when its last node lost it.
    Changes are returned as a whole: a name that another node still has is no change."""

    def __init__(self) -> None:
        self._nodes: dict[str, _Node] = {}
        self._rooms: dict[str, dict[str, int]] = {}
        self._sorted: dict[str, list[str]] = {}

    def __contains__(self, node: str) -> bool:
        return node in self._nodes

    @property
    def nodes(self) -> list[str]:
        return list(self._nodes)

    def has(self, room: str, name: str) -> bool:
        names = self._rooms.get(room)
        return names is not None and name in names

    def names(self, room: str) -> Mapping[str, int]:
        """The room's names on other nodes (each with how many nodes have it)."""
        return self._rooms.get(room, {})

    def count(self, room: str) -> int:
        return len(self._rooms.get(room, ()))

    def rooms(self) -> list[str]:
        return [room for room in self._rooms if room != CONNECTED]

    def sorted_names(self, room: str) -> list[str]:
        names = self._sorted.get(room)
        if names is None:
            names = self._sorted[room] = sorted(self._rooms.get(room, ()))
        return names

    def page(self, room: str, after: str, limit: int) -> list[str]:
        names = self.sorted_names(room)
        start = bisect.bisect_right(names, after) if after else 0
        return names[start : start + limit]

    def apply(self, node: str, changes: Iterable[MemberChange]) -> list[MemberChange]:
        """Node `node` announced `changes` (a node not known yet is added)."""
        known = self._nodes.setdefault(node, _Node())
        net: list[MemberChange] = []
        for change in changes:
            names = known.rooms.setdefault(change.room, set())
            if change.joined and change.name not in names:
                names.add(change.name)
                if self._add(change.room, change.name):
                    net.append(change)
            elif not change.joined and change.name in names:
                names.discard(change.name)
                if not names:
                    del known.rooms[change.room]
                if self._remove(change.room, change.name):
                    net.append(change)
        return net

    def replace(self, node: str, rooms: Mapping[str, Iterable[str]]) -> list[MemberChange]:
        """Node `node`'s whole picture: what changed from what was known of it."""
        known = self._nodes.get(node, _Node())
        wanted = {room: set(names) for room, names in rooms.items()}
        changes = [
            MemberChange(room, name, False)
            for room, names in known.rooms.items()
            for name in names - wanted.get(room, set())
        ]
        changes += [
            MemberChange(room, name, True)
            for room, names in wanted.items()
            for name in names - known.rooms.get(room, set())
        ]
        return self.apply(node, changes)

    def drop(self, node: str) -> list[MemberChange]:
        """Forget node `node` (gone): its names leave where no other node has them."""
        if node not in self._nodes:
            return []
        changes = self.replace(node, {})
        del self._nodes[node]
        return changes

    def _add(self, room: str, name: str) -> bool:
        names = self._rooms.setdefault(room, {})
        count = names.get(name, 0)
        names[name] = count + 1
        if count:
            return False
        self._sorted.pop(room, None)
        return True

    def _remove(self, room: str, name: str) -> bool:
        names = self._rooms[room]
        count = names[name] - 1
        if count:
            names[name] = count
            return False
        del names[name]
        if not names:
            del self._rooms[room]
        self._sorted.pop(room, None)
        return True
