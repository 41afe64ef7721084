"""What only the SQLite engine promises about conversations beyond the contract
(test_store_conversations.py): relations, replies and read markers survive a restart, the
process dying and the upgrade from schema 2; a delete takes the text out of the file; pruning
takes reactions along; the maintenance job forgets markers expired or beyond the cap; a refused
relation fails only itself within a group commit; `read` and `unread` stay a few index ranges."""

from __future__ import annotations

import asyncio
import sqlite3
import sys
from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from grpcchat.core.errors import AlreadyExists, NotFound, StoreError
from grpcchat.core.history import Appended, HistoryStore, Retention
from grpcchat.core.models import Message, Reaction, Relation, RelationKind
from grpcchat.store import sqlite_database
from tests.test_store_conversations import post
from tests.test_store_conversations import relate as relate_appended
from tests.test_store_sqlite import (
    REPO_ROOT,
    SCHEMA_1,
    count_rows,
    in_one_group,
    normalized_schema,
    open_sqlite,
    query,
    statements_of,
    steps_of,
    url,
)

EDIT, DELETE, REACT, UNREACT = RelationKind


async def relate(store: HistoryStore, kind: RelationKind, target: str, **how: Any) -> Message:
    """`test_store_conversations.relate`, answering with the entry alone."""
    return (await relate_appended(store, kind, target, **how)).message


async def test_conversations_survive_close_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    store = await open_sqlite(path)
    first = await post(store, "helo")
    second = await post(store, "gone", sender="bob")
    await post(store, "reply", sender="bob", reply_to=first.id)
    await relate(store, EDIT, first.id, text="hello")
    await relate(store, REACT, first.id, sender="bob")
    await relate(store, REACT, first.id, sender="cy", emoji="🎉")
    await relate(store, DELETE, second.id, sender="bob")
    assert await store.mark_read("cy", "lobby", 2) == 2
    before = await store.read("lobby")
    unread = await store.unread("cy", ["lobby"])
    await store.aclose()

    store = await open_sqlite(path)
    try:
        assert await store.read("lobby") == before
        assert before[0].reactions == (Reaction("👍", ("bob",)), Reaction("🎉", ("cy",)))
        assert await store.read_marker("cy", "lobby") == 2
        assert await store.unread("cy", ["lobby"]) == unread == {"lobby": 1}
        # The state goes on from where it was.
        await relate(store, UNREACT, first.id, sender="bob")
        assert (await store.read("lobby"))[0].reactions == (Reaction("🎉", ("cy",)),)
    finally:
        await store.aclose()


async def test_a_delete_takes_the_text_out_of_the_file(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    store = await open_sqlite(path)
    target = await post(store, "my-secret-one", key="k1")
    await relate(store, EDIT, target.id, text="my-secret-two", key="k2")
    await relate(store, REACT, target.id, sender="bob")
    await post(store, "unrelated")
    await relate(store, DELETE, target.id)
    try:
        assert count_rows(path, "messages", "text LIKE '%secret%'") == 0
        assert count_rows(path, "dedup", "text LIKE '%secret%'") == 0
        assert count_rows(path, "dedup", "deleted = 1") == 1  # the message's key, not the edit's
        assert count_rows(path, "reactions") == 0
        assert count_rows(path, "messages", "deleted = 1") == 1
    finally:
        await store.aclose()
    # Not in the pages' free space either, once the file is closed (and checkpointed).
    assert b"my-secret" not in path.read_bytes()


async def test_pruned_messages_take_their_reactions_along(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    store = await open_sqlite(path, Retention(max_messages=3, max_age=timedelta(hours=1)))
    counted = await post(store)
    await relate(store, REACT, counted.id, sender="bob")
    aged = await post(store, at=datetime.now(UTC) - timedelta(minutes=30))
    await relate(store, REACT, aged.id, sender="bob")
    assert count_rows(path, "reactions") == 1  # `counted` was pruned by the fourth append
    await store.aclose()

    # With a shorter max age, `aged` expires: the maintenance job deletes it and its reaction.
    store = await open_sqlite(path, Retention(max_messages=3, max_age=timedelta(minutes=10)))
    try:
        await store.maintain()
        assert count_rows(path, "reactions") == 0
        assert [m.relation is not None for m in await store.read("lobby")] == [True, True]
    finally:
        await store.aclose()


async def test_the_maintenance_job_forgets_markers_expired_or_beyond_the_cap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_database, "MAINTENANCE_BATCH", 2)  # several batches
    path = tmp_path / "history.db"
    store = await open_sqlite(path, Retention(max_markers=3))
    rooms = [f"r{i}" for i in range(7)]
    try:
        for room in rooms:
            await post(store, room=room, sender="bob")
            await store.mark_read("ann", room, 1)
        await store.mark_read("cy", "r0", 1)  # the newest move
        assert count_rows(path, "read_markers") == 8  # until the job runs
        await store.maintain()
        kept = query(path, "SELECT name, room FROM read_markers ORDER BY moved_at_us")
        assert kept == [("ann", "r5"), ("ann", "r6"), ("cy", "r0")]
        assert [await store.read_marker("ann", room) for room in ("r4", "r5")] == [0, 1]
    finally:
        await store.aclose()
    # Reopened with a max age of a microsecond, every marker has expired: the job deletes them.
    store = await open_sqlite(path, Retention(max_age=timedelta(microseconds=1)))
    try:
        assert await store.read_marker("cy", "r0") == 0
        await store.maintain()
        assert count_rows(path, "read_markers") == 0
    finally:
        await store.aclose()


async def test_a_refused_relation_fails_only_itself_within_its_group(tmp_path: Path) -> None:
    store = await open_sqlite(tmp_path / "history.db")
    try:
        target = (await post(store)).id
        calls: list[Awaitable[object]] = [
            relate(store, REACT, target, sender="bob"),
            relate(store, REACT, target, sender="bob", key="dup"),  # AlreadyExists
            post(store, key="p"),
            relate(store, DELETE, target),
            relate(store, REACT, target, sender="cy"),  # NotFound: deleted just before
            post(store, "last"),
        ]
        statements = await statements_of(store, calls)
        storing = [t for t in " ".join(statements).split("BEGIN IMMEDIATE") if "INSERT" in t]
        assert len(storing) == 1  # one transaction for the group, refusals and all
        page = await store.read("lobby")
        assert [m.seq for m in page] == [1, 2, 3, 4, 5]
        assert [m.relation.kind if m.relation else None for m in page] == [
            None,
            REACT,
            None,
            DELETE,
            None,
        ]
        assert page[0].deleted
        assert count_rows(store._db.path, "dedup", "key = 'dup'") == 0
    finally:
        await store.aclose()


async def test_a_target_pushed_out_earlier_in_the_group_is_gone(tmp_path: Path) -> None:
    """A group settles each room's count limit once, yet a relation or a reply sees the room
    exactly as it would be had each append of the group been stored alone."""
    store = await open_sqlite(tmp_path / "history.db", Retention(max_messages=3))
    try:
        first = (await post(store, "first")).id
        calls: list[Awaitable[object]] = [
            relate(store, REACT, first, sender="bob"),  # still there: seq 2
            post(store, "3"),
            post(store, "4"),  # pushes `first` out
            relate(store, REACT, first, sender="cy"),
            post(store, "too late", reply_to=first),
            post(store, "5"),
        ]
        results = await in_one_group(store, calls)
        assert [type(r).__name__ for r in results] == [
            "Message",
            "Message",
            "Message",
            "NotFound",
            "NotFound",
            "Message",
        ]
        assert [m.seq for m in await store.read("lobby")] == [3, 4, 5]
    finally:
        await store.aclose()


async def test_each_append_of_a_group_gets_its_own_refusal(tmp_path: Path) -> None:
    store = await open_sqlite(tmp_path / "history.db")
    try:
        target = (await post(store)).id
        calls: list[Awaitable[object]] = [
            relate(store, REACT, target, sender="bob"),
            relate(store, REACT, target, sender="bob"),
            relate(store, EDIT, target, sender="bob", text="mine now"),
            relate(store, DELETE, target),
            relate(store, UNREACT, target, sender="bob"),
            post(store, "after"),
        ]
        results = await in_one_group(store, calls)
        assert [type(r).__name__ for r in results] == [
            "Message",
            "AlreadyExists",
            "PermissionDenied",
            "Message",
            "NotFound",
            "Message",
        ]
        assert [r.seq for r in results if isinstance(r, Message)] == [2, 3, 4]
    finally:
        await store.aclose()


async def test_a_group_redone_alone_still_refuses_what_it_refused(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    store = await open_sqlite(path)
    try:
        target = (await post(store)).id
        query(
            path,
            "CREATE TRIGGER full BEFORE INSERT ON messages WHEN NEW.text = 'bad'"
            " BEGIN SELECT RAISE(ROLLBACK, 'database or disk is full'); END",
        )
        calls: list[Awaitable[object]] = [
            relate(store, REACT, target, sender="bob"),
            post(store, "bad"),
            relate(store, REACT, target, sender="bob"),
            post(store, "good"),
        ]
        reacted, failed, refused, good = await in_one_group(store, calls)
        assert isinstance(failed, StoreError)
        assert isinstance(refused, AlreadyExists)
        assert isinstance(reacted, Message)
        assert isinstance(good, Message)
        assert [reacted.seq, good.seq] == [2, 3]
        assert (await store.read("lobby"))[0].reactions == (Reaction("👍", ("bob",)),)
    finally:
        await store.aclose()


async def test_a_read_is_two_queries(tmp_path: Path) -> None:
    store = await open_sqlite(tmp_path / "history.db")
    try:
        ids = [(await post(store, f"m{i}")).id for i in range(20)]
        for i, id in enumerate(ids):
            await relate(store, REACT, id, sender=f"n{i % 3}")
            await relate(store, REACT, id, sender="bob", emoji="🎉")
        statements = await statements_of(store, [store.read("lobby", limit=30)])
        assert [s.split()[0] for s in statements] == ["SELECT", "SELECT"]
        page = await store.read("lobby", limit=30)
        assert all(len(m.reactions) == 2 for m in page if m.relation is None)
    finally:
        await store.aclose()


async def test_unread_reads_only_what_it_counts(tmp_path: Path) -> None:
    store = await open_sqlite(tmp_path / "history.db")
    try:
        for i in range(10):
            await post(store, f"m{i}")
        small = await steps_of(store, partial(store.unread, "bob", ["lobby"]))
        await asyncio.gather(*(post(store, f"n{i}") for i in range(3000)))
        await store.mark_read("bob", "lobby", 3000)
        large = await steps_of(store, partial(store.unread, "bob", ["lobby"]))
        assert await store.unread("bob", ["lobby"]) == {"lobby": 10}
        assert large < 2 * small
    finally:
        await store.aclose()


async def test_relations_survive_the_process_dying_right_after(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    script = f"""
import asyncio, os
from collections.abc import Awaitable
from datetime import UTC, datetime
from grpcchat.core.models import Relation, RelationKind
from grpcchat.server.engines import open_store

async def main():
    store = await open_store({url(path)!r})
    async def add(id, sender, text="", relation=None):
        now = datetime.now(UTC)
        await store.append(
            id=id, room="lobby", sender=sender, text=text, sent_at=now, relation=relation
        )
    await add("m1", "ann", "helo")
    await add("m2", "ann", "oops")
    await add("e1", "ann", "hello", Relation(RelationKind.EDIT, "m1"))
    await add("r1", "bob", "", Relation(RelationKind.REACT, "m1", "👍"))
    await add("d1", "ann", "", Relation(RelationKind.DELETE, "m2"))
    await store.mark_read("bob", "lobby", 4)
    os._exit(0)  # no aclose, no checkpoint: only what each call made durable

asyncio.run(main())
"""
    process = await asyncio.create_subprocess_exec(sys.executable, "-c", script, cwd=REPO_ROOT)
    assert await asyncio.wait_for(process.wait(), 30) == 0
    store = await open_sqlite(path)
    try:
        first, second, *_ = await store.read("lobby")
        assert (first.text, first.reactions) == ("hello", (Reaction("👍", ("bob",)),))
        assert (second.text, second.deleted) == ("", True)
        assert await store.read_marker("bob", "lobby") == 4
    finally:
        await store.aclose()


# -- schema 2 (before conversations) ------------------------------------------------------------

SCHEMA_2 = (  # exactly as grpcchat wrote it: schema 1, then migration 2
    *SCHEMA_1,
    "ALTER TABLE rooms ADD COLUMN messages INTEGER NOT NULL DEFAULT 0",
    "CREATE INDEX rooms_holding_messages ON rooms (room, messages) WHERE messages > 0",
)


def schema_2_history(path: Path, epoch: str, sent_at_us: int) -> None:
    """A file as schema 2 left it: room a, 3 messages of ann's, the second keyed."""
    conn = sqlite3.connect(path)
    with conn:
        for statement in SCHEMA_2:
            conn.execute(statement)
        conn.executemany(
            "INSERT INTO meta VALUES (?, ?)", [("epoch", epoch), ("schema_version", "2")]
        )
        conn.execute("INSERT INTO rooms VALUES ('a', 3, 3)")
        conn.executemany(
            "INSERT INTO messages VALUES ('a', ?, ?, 'ann', ?, ?, 0)",
            [(seq, f"a{seq}", f"text a{seq}", sent_at_us + seq) for seq in (1, 2, 3)],
        )
        conn.execute(
            "INSERT INTO dedup VALUES ('ann', 'k', 'a', 2, 'a2', 'text a2', ?, 0)",
            (sent_at_us + 2,),
        )
    conn.close()


async def test_a_schema_2_history_is_upgraded_and_takes_relations(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    sent_at = datetime.now(UTC).replace(microsecond=0)
    schema_2_history(path, "e" * 32, sqlite_database.to_us(sent_at))

    store = await open_sqlite(path)
    try:
        assert store.epoch == "e" * 32
        old = await store.read("a")
        assert [(m.id, m.seq, m.text, m.sent_at) for m in old] == [
            (f"a{seq}", seq, f"text a{seq}", sent_at + timedelta(microseconds=seq))
            for seq in (1, 2, 3)
        ]
        assert all(
            (m.reply_to, m.relation, m.edited_at, m.deleted, m.reactions)
            == ("", None, None, False, ())
            for m in old
        )
        assert query(path, "SELECT value FROM meta WHERE name = 'schema_version'") == [("3",)]
        repeat = await store.append(
            id="x", room="a", sender="ann", text="again", sent_at=datetime.now(UTC), key="k"
        )
        assert repeat == Appended(old[1], duplicate=True)
        # Messages from before the upgrade take relations, replies and markers.
        now = datetime.now(UTC)
        await store.append(
            id="e",
            room="a",
            sender="ann",
            text="edited",
            sent_at=now,
            relation=Relation(EDIT, "a1"),
        )
        await store.append(
            id="r",
            room="a",
            sender="bob",
            text="",
            sent_at=now,
            relation=Relation(REACT, "a2", "👍"),
        )
        await store.append(id="q", room="a", sender="bob", text="re", sent_at=now, reply_to="a3")
        with pytest.raises(NotFound):
            await store.append(
                id="z", room="a", sender="ann", text="", sent_at=now, relation=Relation(DELETE, "b")
            )
        first, second = (await store.read("a"))[:2]
        assert (first.text, first.edited_at) == ("edited", now)
        assert second.reactions == (Reaction("👍", ("bob",)),)
        assert await store.mark_read("bob", "a", 2) == 2
        assert await store.unread("bob", ["a"]) == {"a": 1}
    finally:
        await store.aclose()

    await (await open_sqlite(tmp_path / "new.db")).aclose()
    assert normalized_schema(path) == normalized_schema(tmp_path / "new.db")
