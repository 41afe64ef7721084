"""Bounded waits over real sessions, so no test sleeps for something it can await."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from grpcchat.client import ChatSession, Connected, FeedEvent
from grpcchat.core.models import Message


class Follower:
    """A live session whose events are collected in the background."""

    def __init__(self, session: ChatSession) -> None:
        self.session = session
        self.events: asyncio.Queue[FeedEvent] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        # What arrived while joining: replayed history, RoomJoined...
        self.before_connected: list[FeedEvent] = []

    async def __aenter__(self) -> Follower:
        self._task = asyncio.create_task(self._collect())
        while not isinstance(event := await asyncio.wait_for(self.events.get(), 5), Connected):
            self.before_connected.append(event)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await self.session.aclose()

    async def _collect(self) -> None:
        async for event in self.session.events():
            await self.events.put(event)

    async def next_event(self, timeout: float = 5.0) -> FeedEvent:
        return await asyncio.wait_for(self.events.get(), timeout)

    async def messages(self, count: int, timeout: float = 10.0) -> list[Message]:
        """The next `count` messages (other events skipped)."""

        async def gather() -> list[Message]:
            got: list[Message] = []
            while len(got) < count:
                event = await self.events.get()
                if isinstance(event, Message):
                    got.append(event)
            return got

        return await asyncio.wait_for(gather(), timeout)


async def aiter_events(session: ChatSession) -> AsyncIterator[FeedEvent]:
    async for event in session.events():
        yield event
