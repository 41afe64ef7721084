"""`grpcchat join`: a chat session in the terminal.

Incoming events print above a prompt_toolkit input line, so half-typed input survives them.
What the user types becomes actions run in order by one worker task: the prompt never waits on
the network, and leaving waits until everything typed has been done. With stdin not a terminal,
each line is read the same way and nothing is decorated.

In a terminal, each message line starts with its seq in the room (dimmed): the handle to type
in `/edit 12 ...`, `/react 12 👍`, `/reply 12 ...`. Who is typing shows in the prompt's bottom
toolbar; what the user types is announced likewise; what is shown is marked read (at most once
a second), and a room entered with unread messages shows where they start.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any

from rich.console import Console, RenderableType
from rich.text import Text

from grpcchat.cli import render
from grpcchat.cli.consoles import err_console
from grpcchat.cli.exits import (
    EXIT_REJECTED,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    error_exit_code,
    exit_code,
)
from grpcchat.cli.lines import visible_inline
from grpcchat.cli.roomarg import room_argument
from grpcchat.cli.timeline import Timeline
from grpcchat.cli.typists import TypingSender, Typists, typing_line
from grpcchat.client import ChatClient, ChatSession, Connected, Reconnecting
from grpcchat.client.config import ClientConfig
from grpcchat.core.errors import ChatError, NoAnswer, RemoteError
from grpcchat.core.models import (
    HistoryGap,
    Message,
    PresenceChange,
    ReadMarker,
    Relation,
    RelationKind,
    RequestRefused,
    RoomJoined,
    RoomLeft,
    Typing,
)
from grpcchat.core.records import record

if TYPE_CHECKING:
    from prompt_toolkit import PromptSession

QUIT_COMMANDS = frozenset({"exit", "/quit", "/exit"})
HELP = """\
/join ROOM       enter a room; plain lines then go there
/leave [ROOM]    leave a room (default: the current one)
/rooms           rooms with members, history and your unread counts
/who [ROOM]      who is in a room
/msg NAME TEXT   a direct message, seen by NAME only
/me ACTION       an action: * you ACTION
/reply N TEXT    answer message N (its seq: what a line starts with in a terminal,
                 `seq` in `grpcchat history --json`)
/edit [N] TEXT   new text for your message N (default: your last one)
/delete [N]      delete your message N (default: your last one)
/react N EMOJI   react to message N; /unreact N EMOJI takes it back
/history [N]     the last N messages of the current room
/help            this list
/quit, exit      leave (Ctrl-D and Ctrl-C too)"""
# How a command that takes arguments is written: what its error says when they do not fit.
USAGE = {
    "/join": "/join ROOM",
    "/msg": "/msg NAME TEXT",
    "/me": "/me ACTION",
    "/reply": "/reply N TEXT (N: the message's seq, what a line starts with in a terminal)",
    "/edit": "/edit [N] TEXT",
    "/delete": "/delete [N]",
    "/react": "/react N EMOJI",
    "/unreact": "/unreact N EMOJI",
    "/history": "/history [N], N from 1 to 1000",
}
# Lines read and not yet done, at most: past it, reading waits (piped into `join`, 400,000 lines
# were read into memory while a rate limit let 20 a second out).
PENDING_ACTIONS = 64
# Read markers go out at most this often (seconds).
MARK_READ_EVERY = 1.0
# Entries read at most, on entering a room, of the unread ones before its replay.
UNREAD_PAGE = 200
# How long leaving waits for the last read marker and typing notice to go out (seconds).
CLOSING_WAIT = 1.0

Action = Callable[[], Awaitable[None]]
# How much of a line not sent is quoted in the error.
QUOTED_LENGTH = 40


class _Line:
    """An action that posts a typed line, which a failure names."""

    __slots__ = ("_post", "text")

    def __init__(self, text: str, post: Action) -> None:
        self.text = text
        self._post = post

    def __call__(self) -> Awaitable[None]:
        return self._post()

    def quoted(self) -> str:
        text = " ".join(self.text.split())
        return repr(text if len(text) <= QUOTED_LENGTH else text[: QUOTED_LENGTH - 1] + "…")


@record
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
        self.actions: asyncio.Queue[Action | None] = asyncio.Queue(PENDING_ACTIONS)
        self.timeline = Timeline(
            session.name, several=self._several, handles=interactive, unread=interactive
        )
        for room in session.rooms:
            self.timeline.joining(room, first=True)
        self.typists = Typists()
        self._typing = TypingSender()
        self._prompt: PromptSession[str] | None = None
        self._toolbar_refresh: asyncio.TimerHandle | None = None
        # Read markers: where each room's is (as far as this session knows), and a pending
        # flush of the ones to move.
        self._read: dict[str, int] = {}
        # Rooms whose unread messages could not all be shown: their markers stay where they are.
        self._unseen: set[str] = set()
        self._mark_flush: asyncio.TimerHandle | None = None
        self._marked_at = 0.0
        # A line got no answer (see `_drop_lines_queued`): until the session is connected
        # again, lines read are not sent either.
        self._dropping = False
        # Rooms a /join waits to enter: whether the server let the session in.
        self._joins: dict[str, asyncio.Future[bool]] = {}
        # Leaves asked for and not yet answered: the next line waits, so "left #room" is
        # printed in its place (piped, it was printed late or, at the end, never).
        self._leaves: dict[str, asyncio.Future[None]] = {}
        # Typing notices and read markers are sent in the background; kept until done.
        self._background: set[asyncio.Task[None]] = set()
        # Off a terminal, the exit code of the first thing refused (0: none): a script piping
        # lines in must not see 0 when one was not sent. A person saw each refusal.
        self.exit_code = 0

    def _several(self, room: str) -> bool:
        # A room just left (its messages may still be on the way) is labelled too.
        return len(self.session.rooms) > 1 or room not in self.session.rooms

    def show(self, line: RenderableType) -> None:
        self.console.print(line, soft_wrap=True)

    def show_all(self, lines: list[Text]) -> None:
        for line in lines:
            self.show(line)

    def fail(self, text: str, code: int = EXIT_REJECTED) -> None:
        """Say what went wrong: on the screen among the messages for a person, on stderr for a
        script (whose stdout is the chat), which also learns the first refusal's exit code."""
        if self.interactive:
            self.show(render.render_error(text))
            return
        err_console.print(render.render_error(text), soft_wrap=True)
        self.exit_code = self.exit_code or code

    async def receive(self) -> None:
        """Print the session's events until cancelled; raises if the first connection fails."""
        async for event in self.session.events():
            match event:
                case Message():
                    self.show_all(self.timeline.message(event))
                    if event.room and self.typists.stopped(event.room, event.sender):
                        self._refresh_toolbar()
                    self._shown(event.room)
                case Typing():
                    if self.interactive and event.name != self.session.name:
                        self.typists.update(event)
                        self._refresh_toolbar()
                case ReadMarker():
                    self._read[event.room] = max(self._read.get(event.room, 0), event.seq)
                case PresenceChange():
                    self.show(render.render_presence(event))
                case RoomJoined():
                    self._read[event.room] = max(self._read.get(event.room, 0), event.read_seq)
                    # Who is there first, then what was said (held back until now so the
                    # unread divider can go where it belongs).
                    if self.interactive:
                        self.show(render.render_joined(event))
                    await self._page_in_unread(event)
                    self.show_all(self.timeline.joined(event))
                    self._shown(event.room)
                    self._settle_join(event.room, joined=True)
                case RoomLeft():
                    self.show(render.render_notice(f"left #{event.room}"))
                    self._settle_leave(event.room)
                case HistoryGap():
                    self.show(render.render_gap(event))
                    if event.first_seq == event.last_seq == 0:
                        self.timeline.replaced(event.room)
                        self._read.pop(event.room, None)
                case RequestRefused():
                    if event.room in self.session.rooms:
                        # Not a join (the session would have given the room up): a typing
                        # notice or read marker. One refused for rate is no news.
                        if event.code != "RESOURCE_EXHAUSTED":
                            self.fail(f"#{event.room}: {event.reason}", exit_code(event.code))
                        continue
                    self.timeline.unjoined(event.room)
                    if self.current == event.room:  # a refused rejoin: where else we are
                        self.current = self.session.rooms[-1] if self.session.rooms else None
                    self.fail(f"#{event.room}: {event.reason}", exit_code(event.code))
                    self._settle_join(event.room, joined=False)
                    self._settle_leave(event.room)
                case Connected():
                    self._dropping = False  # back: what is typed from now on is sent
                    if event.legacy:
                        for room in event.rooms:
                            self.timeline.unjoined(room)
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
                    # A leave the lost stream did not answer is final all the same: the next
                    # stream does not rejoin the room.
                    for room in list(self._leaves):
                        self.show(render.render_notice(f"left #{room}"))
                        self._settle_leave(room)
                    self.timeline.reconnecting(self.session.rooms)
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
            if self._dropping and isinstance(action, _Line) and not self.connected.is_set():
                self._not_sent(action, EXIT_UNAVAILABLE)
                continue
            try:
                await action()
            except ChatError as error:
                if not isinstance(action, _Line):
                    self.fail(str(error), error_exit_code(error))
                    continue
                self.fail(f"not sent: {action.quoted()}: {error}", error_exit_code(error))
                if isinstance(error, NoAnswer):
                    self._dropping = True
                    self._drop_lines_queued(error_exit_code(error))

    def _drop_lines_queued(self, code: int) -> None:
        """After a line the server never answered (an outage longer than --timeout), the lines
        typed behind it are not sent either, each said so: sent once the server is back, they
        would read as if the first had never been typed. So are the lines read later while
        the session is still reconnecting (see `work`)."""
        kept: list[Action | None] = []
        while not self.actions.empty():
            queued = self.actions.get_nowait()
            if isinstance(queued, _Line):
                self._not_sent(queued, code)
            else:
                kept.append(queued)
        for queued in kept:
            self.actions.put_nowait(queued)

    def _not_sent(self, line: _Line, code: int) -> None:
        self.fail(f"not sent: {line.quoted()}: a line before it was not sent", code)

    async def handle(self, line: str) -> bool:
        """Queue what a typed line asks for (waiting while PENDING_ACTIONS are); False when it
        asks to leave."""
        text = line.strip()
        if not text:
            return True
        if text.lower() in QUIT_COMMANDS or text.split()[0].lower() in ("/quit", "/exit"):
            return False
        if not text.startswith("/") or text.startswith("//"):
            # Only the escaping slash goes; blanks before it stay, as in any other line.
            body = line.replace("//", "/", 1) if text.startswith("//") else line
            await self.actions.put(_Line(body, lambda: self._say(body)))
            return True
        command, _, rest = text.partition(" ")
        rest = rest.strip()
        action = self._command(command.lower(), rest)
        if action is not None:
            await self.actions.put(action)
        return True

    def _command(self, command: str, rest: str) -> Action | None:
        match command:
            case "/join" if rest:
                return lambda: self._join(room_argument(rest))
            case "/leave":
                return lambda: self._leave(room_argument(rest) or self.current)
            case "/rooms":
                return self._rooms
            case "/who":
                return lambda: self._who(room_argument(rest) or self.current)
            case "/msg" if len(rest.split(maxsplit=1)) == 2:
                name, text = rest.split(maxsplit=1)
                return _Line(text, lambda: self._say(text, recipient=name))
            case "/me" if rest:
                return _Line(rest, lambda: self._say(rest, action=True))
            case "/reply" if len(parts := rest.split(maxsplit=1)) == 2 and _is_handle(parts[0]):
                return _Line(parts[1], lambda: self._reply(int(parts[0]), parts[1]))
            case "/edit" if rest and not _is_handle(rest):
                handle, text = _handle_and_text(rest)
                return lambda: self._change(RelationKind.EDIT, handle, text)
            case "/delete" if not rest or _is_handle(rest):
                return lambda: self._change(RelationKind.DELETE, int(rest) if rest else None)
            case "/react" | "/unreact" if len(parts := rest.split()) == 2 and _is_handle(parts[0]):
                kind = RelationKind.REACT if command == "/react" else RelationKind.UNREACT
                return lambda: self._change(kind, int(parts[0]), parts[1])
            case "/history" if not rest or (rest.isdigit() and 0 < int(rest) <= 1000):
                count = int(rest) if rest else 20
                return lambda: self._history(count)
            case "/help":
                self.show(render.render_notice(HELP))
            case _:
                error = (
                    f"usage: {USAGE[command]}"
                    if command in USAGE
                    else f"unknown command {command!r}; /help lists them"
                )
                if self.interactive:
                    self.fail(error, EXIT_USAGE)
                else:  # in its place among the lines read before and after it

                    async def refuse() -> None:
                        self.fail(error, EXIT_USAGE)

                    return refuse
        return None

    async def _say(
        self, text: str, *, recipient: str = "", action: bool = False, reply_to: str = ""
    ) -> None:
        if not recipient and self.current is None:
            raise ChatError("you are in no room; /join one first")
        self._typing_notices(self._typing.sent())
        sent = await self.session.send(
            text, self.current or "", recipient=recipient, action=action, reply_to=reply_to
        )
        self.timeline.sent(sent.message)

    async def _reply(self, seq: int, text: str) -> None:
        target = await self._message(seq)
        await self._say(text, reply_to=target.id)

    async def _change(self, kind: RelationKind, seq: int | None, text: str = "") -> None:
        """Edit (`text`: the new text), delete, react or unreact (`text`: the emoji) message
        `seq` of the current room; None: the user's last message there."""
        room = self.current
        if room is None:
            raise ChatError("you are in no room; /join one first")
        if seq is None:
            target = self.timeline.log(room).last_of(self.session.name)
            if target is None:
                verb = kind.value
                raise ChatError(f"no message of yours in #{room} to {verb}; /{verb} N names one")
        else:
            target = await self._message(seq)
        emoji = text if kind in (RelationKind.REACT, RelationKind.UNREACT) else ""
        body = text if kind is RelationKind.EDIT else ""
        await self.session.send(body, room, relation=Relation(kind, target.id, emoji))

    async def _message(self, seq: int) -> Message:
        """Message `seq` of the current room: as shown, or asked of the server."""
        room = self.current
        if room is None:
            raise ChatError("you are in no room; /join one first")
        shown = self.timeline.log(room).at(seq)
        return shown if shown is not None else await self.client.message_at(room, seq)

    async def _join(self, room: str) -> None:
        """Enter `room` and make it the current one once the server has let the session in:
        lines typed right after a /join it refuses went to the refused room (never shown).
        With no answer within --timeout (a reconnect under way), the join stands: it is
        asked again on the next stream."""
        if room not in self.session.rooms and self.session.legacy:
            await self.session.join(room)  # the article's server: no answer ever comes
        elif room not in self.session.rooms and not await self._joined(room):
            return  # refused: `receive` said why
        self.current = room
        if self.interactive and len(self.session.rooms) > 1:  # which one the prompt posts to
            self.show(render.render_notice(f"plain lines now go to #{room}"))
        self._refresh_toolbar()

    async def _joined(self, room: str) -> bool:
        """Ask to enter `room` and wait for the answer: False if refused; True once in, or
        with no answer within --timeout (a reconnect under way: the join stands)."""
        self.timeline.joining(room, first=True)
        outcome: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._joins[room] = outcome
        try:
            await self.session.join(room)
            async with asyncio.timeout(self.client.config.timeout):
                return await outcome
        except TimeoutError:
            return True
        finally:
            self._joins.pop(room, None)

    def _settle_join(self, room: str, joined: bool) -> None:
        outcome = self._joins.get(room)
        if outcome is not None and not outcome.done():
            outcome.set_result(joined)

    async def _leave(self, room: str | None) -> None:
        """Leave `room`, and wait for the server to say so (within --timeout) when connected:
        the article's server, or a stream being reconnected, says nothing."""
        if room is None or room not in self.session.rooms:
            raise ChatError(f"not in #{room}" if room else "you are in no room")
        answered = self.connected.is_set() and not self.session.legacy
        left = self._leaves[room] = asyncio.get_running_loop().create_future()
        try:
            await self.session.leave(room)
            if answered:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.client.config.timeout):
                        await left
        finally:
            self._leaves.pop(room, None)
        if self.current == room:
            self.current = self.session.rooms[-1] if self.session.rooms else None
        self._refresh_toolbar()

    def _settle_leave(self, room: str) -> None:
        left = self._leaves.get(room)
        if left is not None and not left.done():
            left.set_result(None)

    async def _rooms(self) -> None:
        rooms = await self.client.rooms(name=self.session.name)
        self.show(render.render_rooms(rooms, unread=True))

    async def _who(self, room: str | None) -> None:
        if room is None:
            raise ChatError("which room? /who ROOM")
        self.show(render.render_members(room, await self.client.members(room)))

    async def _history(self, count: int) -> None:
        if self.current is None:
            raise ChatError("you are in no room")
        self.show_all(self.timeline.history(await self.client.latest(self.current, limit=count)))

    # -- typing notices ---------------------------------------------------------------------

    def attach(self, prompt: PromptSession[str]) -> None:
        """Show who is typing in `prompt`'s bottom toolbar, and tell the room as the user
        types into it."""
        self._prompt = prompt
        prompt.default_buffer.on_text_changed += lambda buffer: self._typing_notices(
            self._typing.edited(self.current, buffer.text)
        )

    def _typing_notices(self, notices: list[tuple[str, bool]]) -> None:
        if not self.interactive or self.session.legacy:
            return
        for room, active in notices:
            self._in_background(self.session.typing(room, active))

    def _refresh_toolbar(self) -> None:
        """Show who is typing in the current room, until the next notice expires."""
        prompt = self._prompt
        if prompt is None:
            return
        names = self.typists.names(self.current) if self.current else []
        line = typing_line([visible_inline(name) for name in names])
        prompt.bottom_toolbar = f" {line}" if line else None
        prompt.app.invalidate()
        if self._toolbar_refresh is not None:
            self._toolbar_refresh.cancel()
            self._toolbar_refresh = None
        expiry = self.typists.next_expiry()
        if expiry is not None:
            loop = asyncio.get_running_loop()
            self._toolbar_refresh = loop.call_later(expiry + 0.05, self._refresh_toolbar)

    # -- read markers -----------------------------------------------------------------------

    async def _page_in_unread(self, joined: RoomJoined) -> None:
        """More arrived while the user was away than the replay holds: read the unread ones
        before it too (UNREAD_PAGE entries at most, the latest; a notice says if there are
        more), or the marker would move past them unseen."""
        before = self.timeline.unread_before_replay(joined)
        if before is None:
            return
        try:
            earlier = await self.session.client.history(
                joined.room,
                after=joined.read_seq,
                before=before,
                limit=UNREAD_PAGE,
                newest_first=True,
            )
        except ChatError as error:
            self.fail(f"#{joined.room}: could not read the unread messages: {error}")
            self._unseen.add(joined.room)  # not shown, so not read
            return
        if earlier and earlier[-1].seq > joined.read_seq + 1:
            self.show(
                render.render_notice(
                    f"#{joined.room}: more unread messages before these: /history shows more"
                )
            )
        self.timeline.add_unread(joined.room, earlier[::-1])

    def _shown(self, room: str) -> None:
        """Messages of `room` were shown: its read marker moves up to them, soon."""
        if not self.interactive or self._mark_flush is not None or self.session.legacy:
            return
        if self.timeline.latest.get(room, 0) <= self._read.get(room, 0):
            return
        loop = asyncio.get_running_loop()
        delay = max(0.0, self._marked_at + MARK_READ_EVERY - loop.time())
        self._mark_flush = loop.call_later(delay, self._mark_read)

    def _mark_read(self) -> None:
        self._mark_flush = None
        self._marked_at = asyncio.get_running_loop().time()
        for room, seq in self.timeline.latest.items():
            if room in self._unseen:
                continue
            if room in self.session.rooms and seq > self._read.get(room, 0):
                self._read[room] = seq
                self._in_background(self.session.mark_read(room, seq))

    def _in_background(self, work: Coroutine[Any, Any, None]) -> None:
        """Typing notices and read markers: nothing waits for them, and a failure of one
        (the session is gone) is no news to the user."""

        async def run() -> None:
            with contextlib.suppress(ChatError):
                await work

        task = asyncio.create_task(run())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def aclose(self) -> None:
        """The session is ending: mark read what was shown since the last marker went out,
        let what is in the background finish (briefly), stop the rest."""
        if self._toolbar_refresh is not None:
            self._toolbar_refresh.cancel()
        if self._mark_flush is not None:
            self._mark_flush.cancel()
            self._mark_read()
        if self._background:
            await asyncio.wait(self._background, timeout=CLOSING_WAIT)
        for task in self._background:
            task.cancel()


def _is_handle(word: str) -> bool:
    """A message's short handle: its seq, all ASCII digits."""
    return word.isascii() and word.isdigit() and len(word) <= 19


def _handle_and_text(rest: str) -> tuple[int | None, str]:
    """`12 new text` or `new text` (the user's last message)."""
    first, _, text = rest.partition(" ")
    if _is_handle(first) and text.strip():
        return int(first), text.strip()
    return None, rest


async def _typed_lines(room: _Chatroom, interactive: bool) -> AsyncIterator[str]:
    if not interactive:
        # As `grpcchat send` reads them: bytes that are not UTF-8 kept (and refused by the
        # message check), CRLF line ends, and a stdin that cannot be read said so.
        from grpcchat.cli import stdin

        async for line in stdin.lines_as_they_come():
            yield line
        return
    from prompt_toolkit import PromptSession

    prompt: PromptSession[str] = PromptSession()
    room.attach(prompt)
    while True:
        try:
            yield await prompt.prompt_async("> ")
        except (EOFError, KeyboardInterrupt):
            return


async def run_join(config: ClientConfig, options: JoinOptions, console: Console) -> int:
    """Join rooms and chat until the user leaves; return the exit code: that of the first
    thing refused (each was shown as it happened), 0 if none was. Raises RemoteError if the
    server cannot be reached or ends the session for good (a refused name, say)."""
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
            await room.actions.put(None)
            # Leaving waits for everything typed to be done; each send has its own deadline.
            await worker
            return room.exit_code
        finally:
            for task in (typing, worker):
                if task is not None:
                    task.cancel()
            await room.aclose()
            await session.aclose()
            receiver.cancel()


async def _first_of(task: asyncio.Future[Any], receiver: asyncio.Task[None]) -> None:
    """Wait for `task` and raise what it raised; if the receiver ends first, raise why (it only
    ends on a fatal error)."""
    await asyncio.wait({task, receiver}, return_when=asyncio.FIRST_COMPLETED)
    if receiver.done():
        task.cancel()
        receiver.result()
        raise RemoteError("UNAVAILABLE", "the server ended the session")
    task.result()  # stdin that cannot be read, say


async def _read_input(room: _Chatroom, interactive: bool) -> None:
    if interactive:
        from prompt_toolkit.patch_stdout import patch_stdout

        context: AbstractContextManager[object] = patch_stdout(raw=True)
    else:
        context = nullcontext()
    with context:
        async for line in _typed_lines(room, interactive):
            if not await room.handle(line):
                break
