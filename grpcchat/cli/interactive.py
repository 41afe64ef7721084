"""`grpcchat join`: a chat session in the terminal.

Incoming events print above a prompt_toolkit input line, so half-typed input survives them.
What the user types becomes actions run in order by one worker task: the prompt never waits on
the network, and leaving waits until everything typed has been done. With stdin not a terminal,
each line is read the same way and nothing is decorated.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

from rich.console import Console, RenderableType

from grpcchat.cli import render
from grpcchat.client import ChatClient, ChatSession, Connected, Reconnecting
from grpcchat.client.config import ClientConfig
from grpcchat.core.errors import ChatError, RemoteError
from grpcchat.core.models import (
    HistoryGap,
    Message,
    PresenceChange,
    RequestRefused,
    RoomJoined,
    RoomLeft,
)

QUIT_COMMANDS = frozenset({"exit", "/quit", "/exit"})
HELP = """\
/join ROOM       enter a room; plain lines then go there
/leave [ROOM]    leave a room (default: the current one)
/rooms           rooms with members or history
/who [ROOM]      who is in a room
/msg NAME TEXT   a direct message, seen by NAME only
/me ACTION       an action: * you ACTION
/history [N]     the last N messages of the current room
/help            this list
/quit, exit      leave (Ctrl-D and Ctrl-C too)"""

Action = Callable[[], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class JoinOptions:
    name: str
    rooms: tuple[str, ...]
    history: int
    interactive: bool


class _Chatroom:
    def __init__(self, session: ChatSession, console: Console, interactive: bool) -> None:
        self.session = session
        self.client = session.client
        self.console = console
        self.interactive = interactive
        self.current: str | None = session.rooms[0] if session.rooms else None
        self.connected = asyncio.Event()
        self.actions: asyncio.Queue[Action | None] = asyncio.Queue()
        # Rooms whose first join is still replaying: that history is shown dimmed.
        self._first_replay: set[str] = set(session.rooms)

    def show(self, line: RenderableType) -> None:
        self.console.print(line, soft_wrap=True)

    def fail(self, text: str) -> None:
        self.show(render.render_error(text))

    async def receive(self) -> None:
        """Print the session's events until cancelled; raises if the first connection fails."""
        async for event in self.session.events():
            match event:
                case Message():
                    # A room just left (its messages may still be on the way) is labelled too.
                    several = len(self.session.rooms) > 1 or event.room not in self.session.rooms
                    replayed = event.room in self._first_replay
                    self.show(render.render_message(event, show_room=several, replayed=replayed))
                case PresenceChange():
                    self.show(render.render_presence(event))
                case RoomJoined():
                    self._first_replay.discard(event.room)
                    if self.interactive:
                        self.show(render.render_joined(event))
                case RoomLeft():
                    self.show(render.render_notice(f"left #{event.room}"))
                case HistoryGap():
                    self.show(render.render_gap(event))
                case RequestRefused():
                    self._first_replay.discard(event.room)
                    if self.current == event.room:  # a refused /join: stay where we were
                        self.current = self.session.rooms[-1] if self.session.rooms else None
                    self.fail(f"#{event.room}: {event.reason}")
                case Connected():
                    if self.interactive:
                        where = ", ".join(f"#{r}" for r in event.rooms)
                        if event.legacy:
                            where += " (the article's v1 server: lobby only, no history)"
                        self.show(
                            render.render_notice(
                                f"connected as {self.session.name} in {where} at {event.addr}"
                            )
                        )
                    self.connected.set()
                case Reconnecting():
                    self.connected.clear()
                    # With several addresses the next attempt is at another: say which.
                    where = f"; next: {event.addr}" if self.client.connection.several else ""
                    self.show(
                        render.render_notice(
                            f"reconnecting in {event.delay:.1f}s... ({event.reason}){where}",
                            "yellow",
                        )
                    )

    async def work(self) -> None:
        """Run queued actions in order until a None arrives; a failed one is reported."""
        while (action := await self.actions.get()) is not None:
            try:
                await action()
            except ChatError as error:
                self.fail(str(error))

    def handle(self, line: str) -> bool:
        """Queue what a typed line asks for; False when it asks to leave."""
        text = line.strip()
        if not text:
            return True
        if text.lower() in QUIT_COMMANDS:
            return False
        if not text.startswith("/") or text.startswith("//"):
            # Only the escaping slash goes; blanks before it stay, as in any other line.
            body = line.replace("//", "/", 1) if text.startswith("//") else line
            self.actions.put_nowait(lambda: self._say(body))
            return True
        command, _, rest = text.partition(" ")
        rest = rest.strip()
        action = self._command(command.lower(), rest)
        if action is not None:
            self.actions.put_nowait(action)
        return True

    def _command(self, command: str, rest: str) -> Action | None:
        match command:
            case "/join" if rest:
                return lambda: self._join(rest.lstrip("#"))
            case "/leave":
                return lambda: self._leave(rest.lstrip("#") or self.current)
            case "/rooms":
                return self._rooms
            case "/who":
                return lambda: self._who(rest.lstrip("#") or self.current)
            case "/msg" if len(rest.split(maxsplit=1)) == 2:
                name, text = rest.split(maxsplit=1)
                return lambda: self._say(text, recipient=name)
            case "/me" if rest:
                return lambda: self._say(rest, action=True)
            case "/history" if not rest or (rest.isdigit() and 0 < int(rest) <= 1000):
                count = int(rest) if rest else 20
                return lambda: self._history(count)
            case "/help":
                self.show(render.render_notice(HELP))
            case _:
                self.fail(f"unknown or incomplete command {command!r}; /help lists them")
        return None

    async def _say(self, text: str, *, recipient: str = "", action: bool = False) -> None:
        if not recipient and self.current is None:
            raise ChatError("you are in no room; /join one first")
        await self.session.send(text, self.current or "", recipient=recipient, action=action)

    async def _join(self, room: str) -> None:
        if room not in self.session.rooms:
            self._first_replay.add(room)
        await self.session.join(room)
        self.current = room

    async def _leave(self, room: str | None) -> None:
        if room is None or room not in self.session.rooms:
            raise ChatError(f"not in #{room}" if room else "you are in no room")
        await self.session.leave(room)
        if self.current == room:
            self.current = self.session.rooms[-1] if self.session.rooms else None

    async def _rooms(self) -> None:
        self.show(render.render_rooms(await self.client.rooms()))

    async def _who(self, room: str | None) -> None:
        if room is None:
            raise ChatError("which room? /who ROOM")
        self.show(render.render_members(room, await self.client.members(room)))

    async def _history(self, count: int) -> None:
        if self.current is None:
            raise ChatError("you are in no room")
        latest = await self.client.history(self.current, limit=count, newest_first=True)
        for message in reversed(latest):
            self.show(render.render_message(message, replayed=True))


async def _typed_lines(interactive: bool) -> AsyncIterator[str]:
    if not interactive:
        # A daemon thread, not the default executor: a blocked read must not keep the process
        # alive after the session has ended (asyncio.run waits for executor threads).
        loop = asyncio.get_running_loop()
        lines: asyncio.Queue[str] = asyncio.Queue()

        def read() -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody is listening
                for line in sys.stdin:
                    loop.call_soon_threadsafe(lines.put_nowait, line)
                loop.call_soon_threadsafe(lines.put_nowait, "")

        threading.Thread(target=read, name="stdin", daemon=True).start()
        while line := await lines.get():
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
    """Join rooms and chat until the user leaves. Raises RemoteError if the server cannot be
    reached or ends the session for good (a refused name, say)."""
    async with ChatClient(config) as client:
        session = client.session(options.name, options.rooms, history=options.history)
        room = _Chatroom(session, console, options.interactive)
        receiver = asyncio.create_task(room.receive())
        worker = asyncio.create_task(room.work())
        typing: asyncio.Task[None] | None = None
        try:
            await _first_of(asyncio.create_task(room.connected.wait()), receiver)
            if options.interactive:
                room.show(
                    render.render_notice("type a message and press Enter; /help for commands")
                )
            typing = asyncio.create_task(_read_input(room, options.interactive))
            await _first_of(typing, receiver)
            room.actions.put_nowait(None)
            # Leaving waits for everything typed to be done; each send has its own deadline.
            await worker
        finally:
            for task in (typing, worker):
                if task is not None:
                    task.cancel()
            await session.aclose()
            receiver.cancel()


async def _first_of(task: asyncio.Future[Any], receiver: asyncio.Task[None]) -> None:
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
            if not room.handle(line):
                break
