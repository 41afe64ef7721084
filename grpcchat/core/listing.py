"""Paged listings of who is in a room and which rooms exist. A page token is the last name of
the previous page, so paging is stable while names come and go, and costs no scan: names come
from each room's sorted index, stored rooms from the store's own index."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Iterable, Mapping

from grpcchat.core.cluster import Roster
from grpcchat.core.history import HistoryStore
from grpcchat.core.models import RoomInfo
from grpcchat.core.records import record
from grpcchat.core.rooms import Room
from grpcchat.core.validation import MAX_NAME_LENGTH, MAX_ROOM_LENGTH, check_page_token

MAX_PAGE = 1000
DEFAULT_PAGE = 1000


@record
class MembersPage:
    names: list[str]
    total: int  # distinct names in the room
    next_token: str  # "" when this was the last page


# With a user's unread counts, a rooms page is at most this many rooms and costs a request per
# UNREAD_ROOMS_PER_REQUEST of them: each count is the store's work (up to MAX_UNREAD entries of
# an index), and one client asking for 1,000 full rooms' counts, 0.4 s of SQLite's thread a
# page, could keep it busy for everyone at the request rate.
UNREAD_PAGE = 100
UNREAD_ROOMS_PER_REQUEST = 10


def page_size(limit: int) -> int:
    return min(limit, MAX_PAGE) if limit > 0 else DEFAULT_PAGE


def unread_page_size(limit: int) -> int:
    return min(page_size(limit), UNREAD_PAGE)


def unread_page_cost(size: int) -> float:
    """In requests: a page of `size` rooms with their unread counts."""
    return max(1.0, size / UNREAD_ROOMS_PER_REQUEST)


def members_page(
    rooms: Mapping[str, Room], roster: Roster, room: str, after: str, limit: int
) -> MembersPage:
    """The room's sorted names after `after` on every node, at most `limit` (0: the default
    page): the next names of this node's and of the others', merged."""
    check_page_token(after, MAX_NAME_LENGTH)
    members = rooms.get(room)
    size = page_size(limit)
    local = members.page(after, size + 1) if members is not None else []
    remote = roster.page(room, after, size + 1) if roster.count(room) else []
    names = sorted({*local, *remote})[: size + 1] if remote else local
    more = len(names) > size
    names = names[:size]
    total = roster.count(room)
    if members is not None:
        total += members.member_count - members.shared
    return MembersPage(names, total, names[-1] if more else "")


def sample(members: Room, roster: Roster, limit: int) -> tuple[str, ...]:
    """Up to `limit` of the room's names on every node, sorted (all of them in a room no bigger
    than `limit`), without sorting a big room: what a join's RoomJoined lists."""
    remote = roster.names(members.name)
    if not remote:
        return members.sample(limit)
    names = {*members.sample(limit), *itertools.islice(remote, limit)}
    return tuple(sorted(names)[:limit])


async def rooms_page(
    store: HistoryStore,
    rooms: Iterable[str],
    member_count: Callable[[str], int],
    after: str,
    limit: int,
    *,
    user: str = "",
) -> tuple[list[RoomInfo], str]:
    """Rooms with members (`rooms`, each with `member_count` names) or history, by name,
    after `after`, and the token for the next page ("" when this was the last); with a
    `user`, how many messages of each room that user has not read."""
    check_page_token(after, MAX_ROOM_LENGTH)
    size = page_size(limit)
    stored = {r.name: r.messages for r in await store.rooms(after=after, limit=size + 1)}
    live = heapq.nsmallest(size + 1, {name for name in rooms if name > after})
    names = sorted(set(stored) | set(live))[: size + 1]
    more = len(names) > size
    names = names[:size]
    unread = await store.unread(user, names) if user and names else {}
    page = [RoomInfo(n, member_count(n), stored.get(n, 0), unread.get(n, 0)) for n in names]
    return page, names[-1] if more else ""
