"""Message ids (grpcchat.core.ids): the shape of a UUID's hex, unique, and in time order."""

from __future__ import annotations

import time

from grpcchat.core.ids import new_message_id


def test_ids_are_32_hex_digits_and_unique() -> None:
    ids = [new_message_id() for _ in range(10_000)]
    assert len(set(ids)) == len(ids)
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)


def test_an_id_made_a_millisecond_later_sorts_after() -> None:
    first = new_message_id()
    time.sleep(0.002)
    assert new_message_id() > first
