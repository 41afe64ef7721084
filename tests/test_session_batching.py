"""A session's writer under `Session.batches`: a quiet stream is written at once, a busy one in
batches spaced a linger apart (the wait is what is left of a linger since the last write, not
a whole linger after each event). Pure asyncio, no server."""

from __future__ import annotations

import asyncio

import pytest

from grpcchat.core.errors import SlowConsumer
from grpcchat.core.models import Envelope, RequestRefused
from grpcchat.core.session import Session

LINGER = 0.2


def _event(n: int) -> Envelope:
    return Envelope(RequestRefused("lobby", "INVALID_ARGUMENT", f"event {n}"))


class Writer:
    """Drains a session's batches, noting when each was written (the loop's clock)."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.written: list[tuple[float, int]] = []
        self.wrote = asyncio.Event()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        async for batch in self.session.batches():
            self.written.append((loop.time(), len(batch)))
            self.wrote.set()

    async def next_write(self) -> tuple[float, int]:
        self.wrote.clear()
        await asyncio.wait_for(self.wrote.wait(), 5)
        return self.written[-1]

    async def ended(self) -> None:
        """Wait for the writer to finish, raising the session's closing error."""
        await asyncio.wait_for(self._task, 5)

    async def close(self) -> None:
        self.session.close()
        await self.ended()


async def _assert_written_at_once(writer: Writer, n: int) -> None:
    """Offer event `n` alone: it is written by itself, well within a linger."""
    offered = asyncio.get_running_loop().time()
    writer.session.offer(_event(n))
    written, count = await writer.next_write()
    assert count == 1
    assert written - offered < LINGER / 2


async def test_a_quiet_stream_is_written_at_once() -> None:
    writer = Writer(Session("quiet", capacity=100, max_batch=10, linger=LINGER))
    try:
        await asyncio.sleep(0)
        await _assert_written_at_once(writer, 0)
    finally:
        await writer.close()


async def test_a_busy_stream_is_written_in_batches_a_linger_apart() -> None:
    writer = Writer(Session("busy", capacity=100, max_batch=100, linger=LINGER))
    try:
        writer.session.offer(_event(0))
        first, _ = await writer.next_write()
        for n in range(1, 6):  # soon after the write: the stream is busy
            await asyncio.sleep(LINGER / 10)
            writer.session.offer(_event(n))
        second, count = await writer.next_write()
        assert count == 5  # one batch
        assert second - first >= LINGER * 0.99  # no sooner than a linger after the last write
    finally:
        await writer.close()


async def test_an_event_a_linger_after_the_last_write_is_written_at_once() -> None:
    """Still "busy" (within two lingers of the last write), but a linger has passed already:
    waiting another whole linger would only add latency."""
    writer = Writer(Session("steady", capacity=100, max_batch=10, linger=LINGER))
    try:
        writer.session.offer(_event(0))
        await writer.next_write()
        await asyncio.sleep(LINGER * 1.25)
        await _assert_written_at_once(writer, 1)
    finally:
        await writer.close()


async def test_a_busy_stream_writes_an_answer_after_the_shorter_answer_linger() -> None:
    """A client with sends in flight waits on their acks to send more: an answer does not wait
    a whole linger, and takes what was queued before it along."""
    writer = Writer(Session("poster", capacity=100, max_batch=100, linger=LINGER, answer_linger=0))
    try:
        writer.session.offer(_event(0))
        first, _ = await writer.next_write()
        writer.session.offer(_event(1))  # busy: this alone would wait a linger
        writer.session.answer(_event(2))
        second, count = await writer.next_write()
        assert count == 2
        assert second - first < LINGER / 2
        writer.session.offer(_event(3))  # the answer went out: back to the whole linger
        third, count = await writer.next_write()
        assert count == 1
        assert third - second >= LINGER * 0.99
    finally:
        await writer.close()


async def test_until_caught_up_waits_for_the_writer_while_lagging() -> None:
    session = Session("poster", capacity=8, max_batch=100, linger=0.01)
    await asyncio.wait_for(session.until_caught_up(), 5)  # not lagging: at once
    for n in range(5):  # more than half of 8: lagging
        session.offer(_event(n))
    assert session.lagging
    waiting = asyncio.create_task(session.until_caught_up())
    await asyncio.sleep(0.05)
    assert not waiting.done()  # nobody writes yet
    writer = Writer(session)
    try:
        await asyncio.wait_for(waiting, 5)
        assert not session.lagging
        assert writer.written[0][1] == 5
    finally:
        await writer.close()


async def test_until_caught_up_returns_when_the_session_ends() -> None:
    session = Session("poster", capacity=8, max_batch=100, linger=0.01)
    for n in range(5):
        session.offer(_event(n))
    waiting = asyncio.create_task(session.until_caught_up())
    await asyncio.sleep(0)
    session.close()
    await asyncio.wait_for(waiting, 5)
    assert session.closed


async def test_a_session_cut_off_during_its_linger_writes_nothing_more() -> None:
    session = Session("laggard", capacity=2, max_batch=10, linger=LINGER)
    writer = Writer(session)
    session.offer(_event(0))
    _, count = await writer.next_write()
    assert count == 1
    session.offer(_event(1))  # just after a write: the writer lingers
    await asyncio.sleep(LINGER / 4)
    session.offer(_event(2))
    session.offer(_event(3))  # past capacity: cut off, its backlog dropped
    with pytest.raises(SlowConsumer):
        await writer.ended()
    assert [count for _, count in writer.written] == [1]  # no empty write after the linger


async def test_a_close_callback_taken_back_is_not_called() -> None:
    session = Session("s", capacity=10, max_batch=10, linger=LINGER)
    called: list[str] = []
    forget_a = session.on_closed(lambda: called.append("a"))
    session.on_closed(lambda: called.append("b"))
    forget_a()
    forget_a()  # twice is harmless
    session.close()
    assert called == ["b"]
    session.on_closed(lambda: called.append("late"))()  # already closed: called at once
    assert called == ["b", "late"]
