"""The commands of `grpcchat join` as a user runs them, against a server subprocess.

Alice is `python -m grpcchat join` with stdin a pipe: the test types lines into it and reads
what she sees, one plain line each (no colour, no prompt). Everyone else is an in-process
`ChatClient` (a session where presence matters), so the test can see what they received and
what the server stored. Where the terminal itself matters (colour), alice runs in a
pseudo-terminal rendered by pyte (tests/tty.py).

Nothing sleeps: every wait is bounded. Negative checks ("carol never got it") post a marker
after the thing that must not arrive and inspect everything received before the marker, since
one session gets its events in posting order. `PipedJoin.settle()` types a `/who` of a room
nobody is in and waits for its answer: the typed lines are acted on one at a time, in order, so
that answer means everything typed before it has been done.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from grpcchat.cli import render
from grpcchat.cli.interactive import HELP
from grpcchat.client import ChatClient
from grpcchat.client.config import ClientConfig
from grpcchat.server.auth import TokenAuthority
from tests.conftest import (
    ServerProcess,
    cli_env,
    grpcchat_command,
    run_cli_async,
    send_as,
    start_cli,
)
from tests.helpers import Follower
from tests.tty import Terminal, rendered_style

pytestmark = pytest.mark.timeout(20)

TIME = r"\d\d:\d\d:\d\d"
WAIT = 5.0


class PipedJoin:
    """`grpcchat join` with stdin a pipe; every line it prints is kept in `seen` once read:
    the chat from stdout, its errors from stderr (off a terminal, errors go there)."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.seen: list[str] = []
        self.errors: list[str] = []
        self._lines: asyncio.Queue[str | None] = asyncio.Queue()
        self._reader = asyncio.create_task(self._read())
        self._error_reader = asyncio.create_task(self._read_errors())
        self._syncs = 0

    @classmethod
    async def start(cls, addr: str, name: str, *options: str) -> PipedJoin:
        process = await start_cli(
            "join", "--name", name, "--addr", addr, "--timeout", "5", *options
        )
        return cls(process)

    async def _read(self) -> None:
        assert self.process.stdout is not None
        while line := await self.process.stdout.readline():
            self._lines.put_nowait(line.decode().rstrip("\r\n"))
        await self._error_reader  # its last lines before the end
        self._lines.put_nowait(None)

    async def _read_errors(self) -> None:
        assert self.process.stderr is not None
        while line := await self.process.stderr.readline():
            self.errors.append(line.decode().rstrip("\r\n"))
            self._lines.put_nowait(self.errors[-1])

    def type(self, *lines: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write("".join(f"{line}\n" for line in lines).encode())

    async def expect(self, pattern: str, timeout: float = WAIT) -> re.Match[str]:
        """Read lines until one matches `pattern` in full; the lines read stay in `seen`."""
        regex = re.compile(pattern)

        async def read() -> re.Match[str]:
            while (line := await self._lines.get()) is not None:
                self.seen.append(line)
                if found := regex.fullmatch(line):
                    return found
            self._lines.put_nowait(None)  # the end stays the end for the next caller
            raise AssertionError(f"join exited before {pattern!r}:\n{await self._report()}")

        try:
            return await asyncio.wait_for(read(), timeout)
        except TimeoutError:
            raise AssertionError(
                f"timed out waiting for {pattern!r}:\n{await self._report()}"
            ) from None

    async def settle(self) -> list[str]:
        """Wait until everything typed so far has been acted on; return the lines printed
        meanwhile (read by this call)."""
        self._syncs += 1
        room = f"sync-{self._syncs}"
        start = len(self.seen)
        self.type(f"/who {room}")
        await self.expect(rf"#{room}: nobody")
        return self.seen[start:-1]

    async def quit(self) -> int:
        """Close stdin (end of input leaves) and return the exit status."""
        assert self.process.stdin is not None
        self.process.stdin.close()
        status = await asyncio.wait_for(self.process.wait(), WAIT + 6)
        await asyncio.wait_for(self._reader, WAIT)
        while (line := self._lines.get_nowait()) is not None:
            self.seen.append(line)
        return status

    async def kill(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        self._reader.cancel()
        self._error_reader.cancel()

    async def _report(self) -> str:
        return "\n".join(f"  |{line}" for line in self.seen) + "".join(
            f"\nstderr: {line}" for line in self.errors
        )

    def count(self, pattern: str) -> int:
        return sum(1 for line in self.seen if re.fullmatch(pattern, line))


StartJoin = Callable[..., Awaitable[PipedJoin]]


@contextlib.asynccontextmanager
async def piped_joins(addr: str) -> AsyncIterator[StartJoin]:
    """`await start(*options, name="alice")`: a piped `grpcchat join` on `addr`, each killed
    at the end of the block."""
    started: list[PipedJoin] = []

    async def start(*options: str, name: str = "alice") -> PipedJoin:
        joined = await PipedJoin.start(addr, name, *options)
        started.append(joined)
        return joined

    try:
        yield start
    finally:
        for joined in started:
            await joined.kill()


@pytest.fixture
async def start_join(server_process: ServerProcess) -> AsyncIterator[StartJoin]:
    """`await start_join(*options, name="alice")`: a piped `grpcchat join` on the server."""
    async with piped_joins(server_process.addr) as start:
        yield start


@pytest.fixture
async def chat(server_process: ServerProcess) -> AsyncIterator[ChatClient]:
    async with ChatClient(ClientConfig(addr=server_process.addr, timeout=WAIT)) as client:
        yield client


async def texts(chat: ChatClient, room: str) -> list[str]:
    return [m.text for m in await chat.history(room, limit=100)]


def said(sender: str, text: str, room: str = "") -> str:
    """The pattern of a room message line: `14:40:12 [#room ]sender: text`."""
    label = f"#{room} " if room else ""
    return rf"{TIME} {re.escape(label + sender)}: {re.escape(text)}"


# -- rooms ------------------------------------------------------------------------------------


async def test_join_sends_plain_lines_to_the_new_room_and_labels_every_room(
    server_process: ServerProcess, chat: ChatClient, start_join: StartJoin
) -> None:
    alice = await start_join()
    alice.type("hello lobby")
    # In one room, lines carry no room label.
    await alice.expect(said("alice", "hello lobby"))

    alice.type("/join games", "hello games")
    # Her own line coming back from #games proves she is in it, and it is labelled.
    await alice.expect(said("alice", "hello games", "games"))
    await chat.send("bob", "news for the lobby", "lobby")
    await chat.send("bob", "news for games", "games")
    await alice.expect(said("bob", "news for the lobby", "lobby"))
    await alice.expect(said("bob", "news for games", "games"))

    # The server stored each line in the room the screen says.
    code, out, err = await run_cli_async(
        "history", "--addr", server_process.addr, "--room", "games", "--json", timeout=10
    )
    assert code == 0, err
    games = [json.loads(line) for line in out.splitlines()]
    assert [(m["room"], m["sender"], m["text"]) for m in games] == [
        ("games", "alice", "hello games"),
        ("games", "bob", "news for games"),
    ]
    assert await texts(chat, "lobby") == ["hello lobby", "news for the lobby"]


async def test_leave_stops_a_rooms_messages_and_falls_back_to_the_other_room(
    chat: ChatClient, start_join: StartJoin
) -> None:
    alice = await start_join()
    alice.type("/join games", "in games")
    await alice.expect(said("alice", "in games", "games"))

    # Typed together: her line is on its way back from #games as she leaves it, and is
    # still labelled with the room it was said in.
    alice.type("last words in games", "/leave games")
    await alice.expect(said("alice", "last words in games", "games"))
    await alice.expect("left #games")
    await chat.send("bob", "missed it", "games")
    await chat.send("bob", "marker", "lobby")
    # Back to one room: no label any more.
    await alice.expect(said("bob", "marker"))
    assert not [line for line in alice.seen if "missed it" in line], alice.seen

    # Plain lines go to the room she is still in.
    alice.type("back in the lobby")
    await alice.expect(said("alice", "back in the lobby"))
    assert "back in the lobby" in await texts(chat, "lobby")
    assert await texts(chat, "games") == ["in games", "last words in games", "missed it"]


async def test_who_and_rooms_list_members_and_counts(
    chat: ChatClient, start_join: StartJoin
) -> None:
    async with Follower(chat.session("bob", ["lobby", "games"])):
        await chat.send("bob", "anyone for chess?", "games")
        alice = await start_join()
        alice.type("/who", "/who games", "/who #games", "/rooms")
        await alice.expect(r"#lobby: alice, bob")
        await alice.expect(r"#games: bob")
        await alice.expect(r"#games: bob")  # a leading '#' is accepted
        # Alice's unread counts: bob's message in #games (none in the lobby: blank).
        await alice.expect(r"\s*room\s+members\s+messages\s+unread\s*")
        await alice.expect(r"\s*#games\s+1\s+1\s+1\s*")
        await alice.expect(r"\s*#lobby\s+2\s+0\s*")


# -- what gets sent ---------------------------------------------------------------------------


async def test_msg_reaches_the_named_user_only(chat: ChatClient, start_join: StartJoin) -> None:
    async with (
        Follower(chat.session("bob", "lobby")) as bob,
        Follower(chat.session("carol", "lobby")) as carol,
    ):
        alice = await start_join()
        alice.type("/msg bob hi there", "marker")
        await alice.expect(rf"{TIME} \[alice → bob\] hi there")
        await alice.expect(said("alice", "marker"))
        assert alice.count(rf"{TIME} .*hi there") == 1, alice.seen

        direct, marker = await bob.messages(2)
        assert (direct.sender, direct.recipient, direct.text) == ("alice", "bob", "hi there")
        assert marker.text == "marker"
        # Carol's first message is the one posted after the direct message.
        (first,) = await carol.messages(1)
        assert (first.sender, first.text) == ("alice", "marker")
        # Not posted to the room either.
        assert await texts(chat, "lobby") == ["marker"]


async def test_a_line_after_a_refused_join_stays_in_the_room_it_was_typed_in(
    chat: ChatClient, start_join: StartJoin
) -> None:
    """A line typed right after a /join the server refuses goes where the user still is: it
    went to the refused room, where its sender never saw it."""
    async with Follower(chat.session("alice", ["taken"], history=0)):  # the name is taken there
        alice = await start_join()
        alice.type("/join taken", "hello after the refusal")
        await alice.expect(said("alice", "hello after the refusal"))
    assert await texts(chat, "lobby") == ["hello after the refusal"]
    assert await texts(chat, "taken") == []
    assert alice.errors == ["error: #taken: the name 'alice' is already taken in #taken"]


async def test_lines_typed_in_an_outage_longer_than_the_timeout_are_dropped_together(
    tmp_path: Path,
) -> None:
    """The server is down for longer than --timeout while three lines are typed: the first
    is not answered in time, and the two behind it are not sent either (sent once the server
    was back, they would read as if the first had never been typed). Each says so."""
    server = await asyncio.to_thread(ServerProcess, "--data-dir", str(tmp_path))
    port = server.port
    try:
        async with piped_joins(server.addr) as start:
            alice = await start("--timeout", "2")
            alice.type("before")
            await alice.expect(said("alice", "before"))
            server.process.kill()
            await asyncio.to_thread(server.process.wait)
            alice.type("during 0", "during 1", "during 2")
            await alice.expect(r"error: not sent: 'during 2': a line before it was not sent")
            server = await asyncio.to_thread(ServerProcess, "--data-dir", str(tmp_path), port=port)
            async with ChatClient(ClientConfig(addr=server.addr, timeout=WAIT)) as chat:
                await chat.send("bob", "welcome back")
                # Shown once alice's session has resumed (its reconnect backs off up to 5 s).
                await alice.expect(said("bob", "welcome back"), timeout=WAIT + 10)
                alice.type("after")
                await alice.expect(said("alice", "after"))
                assert await texts(chat, "lobby") == ["before", "welcome back", "after"]
            assert alice.errors[0].startswith("error: not sent: 'during 0': "), alice.errors
            assert alice.errors[1:] == [
                f"error: not sent: 'during {i}': a line before it was not sent" for i in (1, 2)
            ]
    finally:
        server.stop()


async def test_after_the_history_is_replaced_commands_name_the_new_messages() -> None:
    """A memory server restarted: a new history whose seqs start again. "Your last message"
    and handles name the new history's messages (/edit changed a message gone with the old)."""
    server = await asyncio.to_thread(ServerProcess)
    port = server.port
    try:
        async with piped_joins(server.addr) as start:
            alice = await start()
            alice.type("old 0", "old 1", "old 2")
            await alice.expect(said("alice", "old 2"))
            server.stop()
            server = await asyncio.to_thread(ServerProcess, port=port)
            await alice.expect(r".*no longer available.*", timeout=WAIT + 10)
            alice.type("new one", "/edit new one, edited", "/react 1 👍")
            await alice.expect(said("alice", "new one, edited (edited)"))
            await alice.expect(r"\s+↳ 1 👍 alice")
            assert alice.errors == []
    finally:
        server.stop()


async def test_with_a_token_join_is_the_tokens_user_whatever_name_says() -> None:
    """The server posts as the token's user: `--name bob` with alice's token was bob to the
    client, whose /edit then found no message of "bob's" to edit."""
    secret = "join-tests-secret-0123456789abcdef"
    alices = TokenAuthority(secret).mint("alice", timedelta(minutes=5))
    server = await asyncio.to_thread(ServerProcess, "--auth-secret", secret)
    try:
        async with piped_joins(server.addr) as start:
            alice = await start("--token", alices, name="bob")
            alice.type("helo", "/edit hello")
            await alice.expect(said("alice", "helo"))
            await alice.expect(said("alice", "hello (edited)"))
            assert alice.errors == []
    finally:
        server.stop()


async def test_me_shows_an_action_and_stores_it_as_one(
    chat: ChatClient, start_join: StartJoin
) -> None:
    alice = await start_join()
    alice.type("/me waves")
    await alice.expect(rf"{TIME} \* alice waves")
    (stored,) = await chat.history("lobby")
    assert (stored.sender, stored.text, stored.action) == ("alice", "waves", True)


async def test_double_slash_sends_a_leading_slash_literally(
    chat: ChatClient, start_join: StartJoin
) -> None:
    alice = await start_join()
    alice.type("//not a command", "  //indented")
    await alice.expect(said("alice", "/not a command"))
    await alice.expect(said("alice", "  /indented"))
    assert await texts(chat, "lobby") == ["/not a command", "  /indented"]
    assert not [line for line in alice.seen if "error" in line], alice.seen


async def test_a_bad_command_is_one_error_line_and_the_session_goes_on(
    chat: ChatClient, start_join: StartJoin
) -> None:
    alice = await start_join()
    alice.type(
        "/dance wildly", "/join", "/history 0", "/leave games", "/msg nobody hello?", "still here"
    )
    errors = [
        "error: unknown command '/dance'; /help lists them",
        "error: usage: /join ROOM",
        "error: usage: /history [N], N from 1 to 1000",
        "error: not in #games",
        "error: not sent: 'hello?': 'nobody' is not connected",
    ]
    await alice.expect(said("alice", "still here"))
    # One line each, in any order (a command that needs no server answers at once).
    assert sorted(line for line in alice.seen if "error" in line) == sorted(errors), alice.seen
    assert not [line for line in alice.seen if "left #" in line], alice.seen
    # None of them was sent as a message, and the session ends with the first one's code (off
    # a terminal: a script must not see 0): the unknown command, a usage error.
    assert await texts(chat, "lobby") == ["still here"]
    assert await alice.quit() == 2


async def test_help_lists_the_commands(start_join: StartJoin) -> None:
    alice = await start_join()
    alice.type("/help")
    shown = await alice.settle()
    assert shown == HELP.splitlines()
    for command in ("/join", "/leave", "/rooms", "/who", "/msg", "/me", "/history", "/quit"):
        assert any(line.startswith(command) for line in shown), command


# -- history ----------------------------------------------------------------------------------


async def test_history_prints_the_last_n_messages_of_the_current_room(
    chat: ChatClient, start_join: StartJoin
) -> None:
    for i in range(1, 6):
        await chat.send("bob", f"m{i}", "lobby")
    await chat.send("bob", "elsewhere", "games")
    alice = await start_join("--history", "0")
    assert await alice.settle() == []  # nothing replayed on entry

    alice.type("/history 3")
    shown = await alice.settle()
    assert len(shown) == 3, shown
    for line, text in zip(shown, ("m3", "m4", "m5"), strict=True):
        assert re.fullmatch(said("bob", text), line), shown

    # The current room's: after /join, that room's.
    alice.type("/join games", "/history 1")
    shown = await alice.settle()
    assert len(shown) == 1, shown
    assert re.fullmatch(said("bob", "elsewhere"), shown[0]), shown


async def test_join_with_history_shows_the_latest_before_live_messages(
    chat: ChatClient, start_join: StartJoin
) -> None:
    for i in range(1, 4):
        await chat.send("bob", f"old {i}", "lobby")
    alice = await start_join("--history", "2")
    replayed = await alice.settle()  # typed lines are read only once she is in
    assert len(replayed) == 2, replayed
    assert re.fullmatch(said("bob", "old 2"), replayed[0]), replayed
    assert re.fullmatch(said("bob", "old 3"), replayed[1]), replayed

    await chat.send("bob", "live one", "lobby")
    await alice.expect(said("bob", "live one"))
    assert not [line for line in alice.seen if "old 1" in line], alice.seen


# -- presence and what is printed -------------------------------------------------------------


async def test_presence_lines_when_someone_comes_and_goes(
    chat: ChatClient, start_join: StartJoin
) -> None:
    alice = await start_join()
    await alice.settle()  # she is in the lobby before bob arrives
    async with Follower(chat.session("bob", "lobby")):
        await alice.expect(rf"{TIME} → bob joined #lobby")
    await alice.expect(rf"{TIME} ← bob left #lobby")
    assert alice.count(rf"{TIME} → bob joined #lobby") == 1, alice.seen


async def test_markup_in_a_message_prints_literally(
    chat: ChatClient, start_join: StartJoin
) -> None:
    alice = await start_join()
    await alice.settle()
    await chat.send("bob", "[bold]x[/bold] and [red]y[/]", "lobby")
    await alice.expect(said("bob", "[bold]x[/bold] and [red]y[/]"))
    alice.type("/me [italic]bows[/italic]")
    await alice.expect(rf"{TIME} \* alice \[italic\]bows\[/italic\]")


# -- in a terminal ----------------------------------------------------------------------------


def _colour_env() -> dict[str, str]:
    env = cli_env(TERM="xterm-256color")
    for name in ("NO_COLOR", "FORCE_COLOR", "COLORTERM", "TTY_COMPATIBLE"):
        env.pop(name, None)
    return env


@pytest.fixture
def terminal(server_process: ServerProcess) -> Iterator[Terminal]:
    """Alice's `grpcchat join` in a colour terminal, ready for input."""
    argv = grpcchat_command(
        "join", "--name", "alice", "--addr", server_process.addr, "--timeout", "5"
    )
    alice = Terminal(argv, _colour_env())
    try:
        alice.wait_for_text("type a message and press Enter")
        alice.wait_for(lambda: alice.cursor_line() == ">", "the prompt")
        yield alice
    finally:
        alice.close()


# In a terminal a room message's line starts with its handle (its seq), then the time.
HANDLE = r" *\d+ "


def _rows(alice: Terminal, pattern: str) -> list[int]:
    """Rows of messages `pattern` matches (after the handle)."""
    return [i for i, line in enumerate(alice.lines()) if re.fullmatch(HANDLE + pattern, line)]


def test_unknown_command_in_a_terminal_is_one_red_line(terminal: Terminal) -> None:
    alice = terminal
    alice.type("/dance\r")
    error = "error: unknown command '/dance'; /help lists them"
    alice.wait_for_text(error)
    alice.type("still here\r")
    alice.wait_for(lambda: bool(_rows(alice, said("alice", "still here"))), "alice's message")

    rows = [line for line in alice.lines() if "error" in line]
    assert rows == [error], alice.dump()
    red = rendered_style("bold red")
    cells = alice.cells(alice.row_of(error), 0, len(error))
    assert {(c.fg, c.bold) for c in cells if c.data.strip()} == {(red.fg, red.bold)}
    assert red.fg != "default"


def test_markup_in_a_terminal_is_neither_styled_nor_hidden(
    server_process: ServerProcess, terminal: Terminal
) -> None:
    alice = terminal
    text = "[bold]x[/bold]"
    send_as(server_process.addr, "bob", text)
    alice.wait_for(lambda: bool(_rows(alice, said("bob", text))), "bob's message")
    (row,) = _rows(alice, said("bob", text))
    cells = alice.cells(row, render.HANDLE_WIDTH + 1 + len("00:00:00 bob: "), len(text))
    assert "".join(c.data for c in cells) == text
    assert not any(c.bold for c in cells), alice.dump()
    assert {c.fg for c in cells} == {"default"}


async def test_lines_read_wait_while_enough_are_pending() -> None:
    """Piped into join against a rate limit, every line was read into memory at once (400,000
    lines: 210 MB); reading now waits while PENDING_ACTIONS lines are not done."""
    from types import SimpleNamespace

    from rich.console import Console

    from grpcchat.cli.interactive import PENDING_ACTIONS, _Chatroom

    session = SimpleNamespace(client=None, name="pipe", rooms=["lobby"], legacy=False)
    room = _Chatroom(session, Console(), interactive=False)  # type: ignore[arg-type]
    for n in range(PENDING_ACTIONS):
        assert await room.handle(f"line {n}")
    blocked = asyncio.create_task(room.handle("one too many"))
    await asyncio.sleep(0.05)
    assert not blocked.done()
    await room.actions.get()  # one is done: the next is taken
    assert await asyncio.wait_for(blocked, 5)
