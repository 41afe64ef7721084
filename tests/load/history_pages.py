"""What current state costs a history page: plain pages against pages whose every message was
edited and reacted to.

    python tests/load/history_pages.py [--store memory:// | sqlite:///tmp/h.db | nats://...]
                                       [--messages 2000] [--page 100] [--reads 200]

Fills two rooms through the store itself: `plain` with messages only, `busy` with the same
number of messages, each edited once and given two reactions (so its log holds four entries per
message), then times `read` of the newest `--page` entries of each room (the same page size),
and of the newest 4 x `--page` entries of `busy` (the same number of messages, with their
changes), `--reads` times each, alternating. A benchmark, not a test: run it alone.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime

from grpcchat.core.history import HistoryStore
from grpcchat.core.models import Relation, RelationKind
from grpcchat.server.engines import open_store


async def _fill(store: HistoryStore, messages: int) -> None:
    """The two rooms, appended concurrently in batches (as the hub's chain hands them over)."""
    names = ("alice", "bob", "carol")
    batch: list[asyncio.Task[object]] = []

    async def flush() -> None:
        await asyncio.gather(*batch)
        batch.clear()

    for i in range(messages):
        sender = names[i % 3]
        batch.append(asyncio.ensure_future(_post(store, "plain", sender, f"message {i}")))
        ids = uuid.uuid4().hex
        await _post(store, "busy", sender, f"message {i}", ids)
        batch.append(asyncio.ensure_future(_relate(store, sender, ids, RelationKind.EDIT, "")))
        for reactor in names[:2]:
            batch.append(
                asyncio.ensure_future(_relate(store, reactor, ids, RelationKind.REACT, "👍"))
            )
        if len(batch) >= 256:
            await flush()
    await flush()


async def _post(store: HistoryStore, room: str, sender: str, text: str, id: str = "") -> object:
    return await store.append(
        id=id or uuid.uuid4().hex, room=room, sender=sender, text=text, sent_at=datetime.now(UTC)
    )


async def _relate(
    store: HistoryStore, sender: str, target: str, kind: RelationKind, emoji: str
) -> object:
    return await store.append(
        id=uuid.uuid4().hex,
        room="busy",
        sender=sender,
        text="edited" if kind is RelationKind.EDIT else "",
        sent_at=datetime.now(UTC),
        relation=Relation(kind, target, emoji),
    )


async def _time_read(store: HistoryStore, room: str, limit: int) -> float:
    started = time.perf_counter()
    page = await store.read(room, limit=limit, newest_first=True)
    elapsed = time.perf_counter() - started
    assert len(page) == limit, f"{room}: {len(page)} entries"
    return elapsed


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", default="")
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--page", type=int, default=100)
    parser.add_argument("--reads", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        url = args.store or f"sqlite:///{scratch}/history.db"
        store = await open_store(url)
        try:
            started = time.perf_counter()
            await _fill(store, args.messages)
            filled = time.perf_counter() - started
            plain: list[float] = []
            busy: list[float] = []
            same_messages: list[float] = []
            for _ in range(args.reads):
                plain.append(await _time_read(store, "plain", args.page))
                busy.append(await _time_read(store, "busy", args.page))
                same_messages.append(await _time_read(store, "busy", 4 * args.page))
        finally:
            await store.aclose()
    p_plain, p_busy = statistics.median(plain) * 1000, statistics.median(busy) * 1000
    p_same = statistics.median(same_messages) * 1000
    print(
        f"{url.split('://')[0]}: {args.messages} messages a room (filled in {filled:.1f}s); "
        f"median of {args.reads} reads: {args.page} plain messages {p_plain:.2f} ms; "
        f"{args.page} entries of edited and reacted ones {p_busy:.2f} ms "
        f"({p_busy / p_plain:.2f}x); the same {args.page} messages with their changes "
        f"({4 * args.page} entries) {p_same:.2f} ms ({p_same / p_plain:.2f}x)"
    )


if __name__ == "__main__":
    asyncio.run(main())
