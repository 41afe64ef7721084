"""`grpcchat join`: a chat session in the terminal.

Incoming messages print above a prompt_toolkit input line, so half-typed input survives them.
Lines typed are queued and posted in order by one sender task: the prompt never waits on the
network, and leaving waits until everything typed has been accepted. With stdin not a terminal,
each line is a message and nothing is decorated.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

from rich.console import Console
from rich.text import Text

from grpcchat import ui
from grpcchat.client import ChatClient, ChatSession, Connected, Reconnecting
from grpcchat.config import ClientConfig
from grpcchat.errors import ChatError, RemoteError
from grpcchat.models import Message

QUIT_COMMANDS = frozenset({"exit", "/quit", "/exit"})


@dataclass(frozen=True, slots=True)
class JoinOptions:
    name: str
    room: str
    interactive: bool


class _Chatroom:
    def __init__(self, session: ChatSession, console: Console, interactive: bool) -> None:
        self.session = session
        self.console = console
        self.interactive = interactive
        self.connected = asyncio.Event()
        self.outbox: asyncio.Queue[str | None] = asyncio.Queue()

    def show(self, line: Text) -> None:
        self.console.print(line, soft_wrap=True)

    async def receive(self) -> None:
        """Print the room's events until cancelled; raises if the first connection fails."""
        async for event in self.session.events():
            if isinstance(event, Message):
                self.show(ui.render_message(event))
            elif isinstance(event, Connected):
                if self.interactive:
                    where = "the article's v1 server, lobby only" if event.legacy else event.room
                    self.show(ui.render_notice(f"connected as {self.session.name} ({where})"))
                self.connected.set()
            elif isinstance(event, Reconnecting):
                self.connected.clear()
                self.show(
                    ui.render_notice(
                        f"reconnecting in {event.delay:.1f}s... ({event.reason})", "yellow"
                    )
                )

    async def send_all(self) -> None:
        """Post queued lines in order until a None arrives."""
        while (text := await self.outbox.get()) is not None:
            try:
                await self.session.send(text)
            except ChatError as error:
                self.show(ui.render_error(f"not sent: {error}"))


async def _typed_lines(interactive: bool) -> AsyncIterator[str]:
    if not interactive:
        loop = asyncio.get_running_loop()
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            yield line.rstrip("\n")
        return
    from prompt_toolkit import PromptSession

    prompt: PromptSession[str] = PromptSession()
    while True:
        try:
            yield await prompt.prompt_async("> ")
        except (EOFError, KeyboardInterrupt):
            return


async def run_join(config: ClientConfig, options: JoinOptions, console: Console) -> None:
    """Join a room and chat until the user leaves. Raises RemoteError if the server cannot be
    reached or ends the session for good (a refused name, say)."""
    async with ChatClient(config) as client:
        room = _Chatroom(client.session(options.name, options.room), console, options.interactive)
        receiver = asyncio.create_task(room.receive())
        sender = asyncio.create_task(room.send_all())
        typing: asyncio.Task[None] | None = None
        try:
            await _first_of(asyncio.create_task(room.connected.wait()), receiver)
            if options.interactive:
                room.show(ui.render_notice("type a message and press Enter; exit or Ctrl-D leaves"))
            typing = asyncio.create_task(_read_input(room, options.interactive))
            await _first_of(typing, receiver)
            room.outbox.put_nowait(None)
            # Leaving waits for what was typed to be accepted, up to the send timeout.
            await asyncio.wait_for(sender, config.timeout + 1)
        finally:
            for task in (typing, sender):
                if task is not None:
                    task.cancel()
            await room.session.aclose()
            receiver.cancel()


async def _first_of(task: asyncio.Task[object], receiver: asyncio.Task[None]) -> None:
    """Wait for `task`; if the receiver ends first, raise why (it only ends on a fatal error)."""
    await asyncio.wait({task, receiver}, return_when=asyncio.FIRST_COMPLETED)
    if receiver.done():
        task.cancel()
        receiver.result()
        raise RemoteError("UNAVAILABLE", "the server ended the session")


async def _read_input(room: _Chatroom, interactive: bool) -> None:
    if interactive:
        from prompt_toolkit.patch_stdout import patch_stdout

        context: AbstractContextManager[object] = patch_stdout(raw=True)
    else:
        context = nullcontext()
    with context:
        async for line in _typed_lines(interactive):
            text = line.strip()
            if not text:
                continue
            if text.lower() in QUIT_COMMANDS:
                break
            room.outbox.put_nowait(line)
