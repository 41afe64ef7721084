"""Seq order is delivery order: many concurrent posters on one room, on every engine, and on a
store whose appends return out of order (the hub's per-room chain, not the store's timing,
orders delivery). Every reader receives exactly what History returns, in that order."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from grpcchat.core.errors import StoreError
from grpcchat.core.history import Appended, HistoryStore, Retention
from grpcchat.core.hub import Hub
from grpcchat.core.limits import Limits
from grpcchat.core.models import Relation
from grpcchat.server.engines import open_store
from grpcchat.store.memory import MemoryStore
from tests.helpers import RoomReader

TIMEOUT = 20.0
POSTERS, POSTS = 20, 50
ROOM = "busy"


class JitteryStore(MemoryStore):
    """Numbers each append when called (as the contract says), then returns after a random
    delay, so appends return out of order; texts ending in "!" fail instead, storing nothing."""

    def __init__(self) -> None:
        super().__init__(Retention())
        self._random = random.Random(7)

    async def append(
        self,
        *,
        id: str,
        room: str,
        sender: str,
        text: str,
        sent_at: datetime,
        key: str = "",
        action: bool = False,
        reply_to: str = "",
        relation: Relation | None = None,
    ) -> Appended:
        delay = self._random.random() * 0.003
        if text.endswith("!"):
            await asyncio.sleep(delay)
            raise StoreError("the disk is full")
        appended = await super().append(
            id=id,
            room=room,
            sender=sender,
            text=text,
            sent_at=sent_at,
            key=key,
            action=action,
            reply_to=reply_to,
            relation=relation,
        )
        await asyncio.sleep(delay)
        return appended


@pytest.fixture(params=["memory", "sqlite", "jittery"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[HistoryStore]:
    if request.param == "jittery":
        opened: HistoryStore = JitteryStore()
    else:
        url = "memory://" if request.param == "memory" else f"sqlite://{tmp_path}/h.db"
        opened = await open_store(url)
    yield opened
    await opened.aclose()


def make_hub(store: HistoryStore) -> Hub:
    return Hub(store, Limits(rate=0, request_rate=0, queue_size=10 * POSTERS * POSTS))


async def post_concurrently(hub: Hub, *, failing_every: int = 0, shielded: bool = True) -> int:
    """POSTERS tasks of POSTS posts each, all at once; how many failed."""
    failures = 0

    async def poster(i: int) -> None:
        nonlocal failures
        for j in range(POSTS):
            fail = failing_every and (i * POSTS + j) % failing_every == 0
            try:
                text = f"{i}/{j}" + ("!" if fail else "")
                await hub.post(f"p{i}", text, room=ROOM, shielded=shielded)
            except StoreError:
                failures += 1

    await asyncio.gather(*(poster(i) for i in range(POSTERS)))
    return failures


@pytest.mark.parametrize("shielded", [True, False], ids=["shielded", "unshielded"])
async def test_readers_see_seq_order_which_is_history_order(
    store: HistoryStore, shielded: bool
) -> None:
    hub = make_hub(store)
    failing_every = 7 if isinstance(store, JitteryStore) else 0
    async with hub.connect("ann") as ann, hub.connect("bob") as bob:
        readers = [RoomReader(ann, ROOM), RoomReader(bob, ROOM)]
        try:
            for session, reader in zip([ann, bob], readers, strict=True):
                await hub.join(session, ROOM)
                await asyncio.wait_for(reader.joined.wait(), TIMEOUT)
            failures = await post_concurrently(hub, failing_every=failing_every, shielded=shielded)
            stored = POSTERS * POSTS - failures
            assert failures == (len(range(0, POSTERS * POSTS, 7)) if failing_every else 0)
            history = await hub.history(ROOM, limit=POSTERS * POSTS)
            assert [m.seq for m in history] == list(range(1, stored + 1))
            for reader in readers:
                await reader.until(stored)
                assert reader.messages == history
            # Each poster's messages are stored (and so delivered) in the order it sent them.
            for i in range(POSTERS):
                mine = [m.text for m in history if m.sender == f"p{i}"]
                assert mine == sorted(mine, key=lambda text: int(text.split("/")[1]))
        finally:
            for reader in readers:
                await reader.stop()


async def test_a_cancelled_poster_still_delivers_what_was_stored(store: HistoryStore) -> None:
    hub = make_hub(store)
    async with hub.connect("ann") as ann:
        reader = RoomReader(ann, ROOM)
        try:
            await hub.join(ann, ROOM)
            await asyncio.wait_for(reader.joined.wait(), TIMEOUT)
            posts = [asyncio.create_task(hub.post("p", f"m{i}", room=ROOM)) for i in range(200)]
            await asyncio.sleep(0)  # every post is under way: its append is in line
            for task in posts[::2]:
                task.cancel()
            await asyncio.gather(*posts, return_exceptions=True)
            history = await hub.history(ROOM, limit=1000)
            assert [m.text for m in history] == [f"m{i}" for i in range(200)]
            await reader.until(len(history))
            assert reader.messages == history
        finally:
            await reader.stop()


async def test_only_a_shielded_post_stores_in_a_task_of_its_own() -> None:
    storing_tasks: list[asyncio.Task[object] | None] = []

    class RecordingStore(MemoryStore):
        async def append(self, **fields: Any) -> Appended:
            storing_tasks.append(asyncio.current_task())
            return await super().append(**fields)

    hub = make_hub(RecordingStore(Retention()))
    await hub.post("p", "shielded", room=ROOM)
    await hub.post("p", "unshielded", room=ROOM, shielded=False)
    poster = asyncio.current_task()
    assert [task is poster for task in storing_tasks] == [False, True]


async def test_the_chain_leaves_nothing_behind(store: HistoryStore) -> None:
    hub = make_hub(store)
    await asyncio.gather(*(hub.post("p", f"m{i}", room=f"r{i % 30}") for i in range(300)))
    assert hub._last_post == {}
