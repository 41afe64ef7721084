"""Bounded waits over real sessions, so no test sleeps for something it can await."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from grpcchat.client import ChatClient, ChatSession, Connected, FeedEvent
from grpcchat.client.config import ClientConfig
from grpcchat.core.limits import Limits
from grpcchat.core.models import Message, RoomJoined
from grpcchat.core.session import Session
from grpcchat.server import ChatServer
from grpcchat.server.config import ServerConfig


@contextlib.asynccontextmanager
async def served(
    limits: Limits, *, timeout: float = 5.0
) -> AsyncIterator[tuple[ChatServer, ChatClient]]:
    """A server on port 0 with its history in memory and these limits, and a client of it."""
    config = ServerConfig(port=0, store="memory://", limits=limits)
    async with (
        ChatServer(config) as server,
        ChatClient(ClientConfig(addr=f"127.0.0.1:{server.port}", timeout=timeout)) as client,
    ):
        yield server, client


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


class RoomReader:
    """Every message a hub session receives in `room`, in order, read in the background."""

    def __init__(self, session: Session, room: str, timeout: float = 20.0) -> None:
        self.messages: list[Message] = []
        self.joined = asyncio.Event()
        self._room = room
        self._timeout = timeout
        self._changed = asyncio.Event()
        self._task = asyncio.create_task(self._run(session))

    async def _run(self, session: Session) -> None:
        async for batch in session.batches():
            for envelope in batch:
                event = envelope.event
                if isinstance(event, Message) and event.room == self._room:
                    self.messages.append(event)
                elif isinstance(event, RoomJoined):
                    self.joined.set()
            self._changed.set()

    async def until(self, count: int) -> None:
        async with asyncio.timeout(self._timeout):
            while len(self.messages) < count:
                self._changed.clear()
                await self._changed.wait()

    async def stop(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
