"""Conversations in `grpcchat join`: edits, deletes, reactions and replies shown as they happen,
who is typing in the bottom toolbar, the unread divider, unread counts in /rooms.

The pure parts (what is printed for each entry, who is typing, when typing notices go out) are
tested directly; the rest end to end: `grpcchat join` with stdin a pipe (`PipedJoin`, as in
test_join_commands) or in a pseudo-terminal rendered by pyte (tests/tty.py), against a server
subprocess, with other users as `grpcchat send` / `grpcchat join` subprocesses.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta

import pytest
from rich.text import Text

from grpcchat.cli import render
from grpcchat.cli.roomlog import RoomLog
from grpcchat.cli.timeline import Timeline
from grpcchat.cli.typists import TYPING_REFRESH, TypingSender, Typists, composes, typing_line
from grpcchat.client import ChatClient
from grpcchat.client.config import ClientConfig
from grpcchat.core.models import (
    Message,
    Position,
    Reaction,
    Relation,
    RelationKind,
    RoomJoined,
    Typing,
)
from tests.conftest import ServerProcess, cli_env, grpcchat_command, run_cli

# The piped `grpcchat join` of test_join_commands.
from tests.test_join_commands import StartJoin, piped_joins, said
from tests.tty import Terminal

pytestmark = pytest.mark.timeout(30)

# Recent: a message more than 20 hours old shows its date too.
AT = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
TIME = r"\d\d:\d\d:\d\d"
HANDLE = r" *\d+ "


# -- the pure parts ------------------------------------------------------------------------------


def msg(seq: int, sender: str = "alice", text: str = "hi", **fields: object) -> Message:
    return Message(f"id{seq}", "lobby", sender, text, AT, seq, "e", **fields)  # type: ignore[arg-type]


def change(seq: int, kind: RelationKind, target: int, sender: str = "alice", **f: str) -> Message:
    emoji = f.get("emoji", "")
    relation = Relation(kind, f"id{target}", emoji)
    return msg(seq, sender, f.get("text", ""), relation=relation)


def plain(lines: Sequence[Text]) -> list[str]:
    return [line.plain for line in lines]


def untimed(line: str) -> str:
    """A line without the time it starts with (if it does)."""
    return line.split(" ", 1)[1] if line[:1].isdigit() else line


def dimmed(line: Text, part: str) -> bool:
    """Whether `part` of `line` is shown dimmed."""
    at = line.plain.index(part)
    styles = [str(line.style)] + [str(s.style) for s in line.spans if s.start <= at < s.end]
    return any("dim" in style.split() for style in styles)


def timeline(handles: bool = False, unread: bool = False) -> Timeline:
    return Timeline("alice", several=lambda room: False, handles=handles, unread=unread)


def test_live_relations_show_the_message_again_as_it_is_now() -> None:
    shown = timeline(handles=True)
    hhmmss = f"{AT.astimezone():%H:%M:%S}"
    assert plain(shown.message(msg(1, text="helo"))) == [f"   1 {hhmmss} alice: helo"]

    assert plain(shown.message(change(2, RelationKind.EDIT, 1, text="hello"))) == [
        f"   1 {hhmmss} alice: hello (edited)"
    ]
    assert plain(shown.message(change(3, RelationKind.REACT, 1, "bob", emoji="👍"))) == [
        "  ↳ 1 👍 bob"
    ]
    shown.message(change(4, RelationKind.REACT, 1, "carol", emoji="👍"))
    assert plain(shown.message(change(5, RelationKind.REACT, 1, "carol", emoji="🎉"))) == [
        "  ↳ 1 👍 bob, carol · 🎉 carol"
    ]
    assert plain(shown.message(change(6, RelationKind.UNREACT, 1, "bob", emoji="👍"))) == [
        "  ↳ 1 👍 carol · 🎉 carol"
    ]
    # A reply quotes what it answers, as it is now.
    assert plain(shown.message(msg(7, "bob", "welcome", reply_to="id1"))) == [
        f"  ┌ 1 alice: hello\n   7 {hhmmss} bob: welcome"
    ]
    assert plain(shown.message(change(8, RelationKind.DELETE, 1))) == [
        f"   1 {hhmmss} alice: message deleted"
    ]
    assert shown.log("lobby").at(1) == msg(1, text="", edited_at=AT, deleted=True)
    assert shown.latest == {"lobby": 8}
    # A change of a message not shown here says what happened, without the message.
    assert plain(shown.message(change(9, RelationKind.EDIT, 99, "bob", text="x"))) == [
        f"{hhmmss} bob edited an earlier message: x"
    ]


def test_a_replay_shows_current_state_once_and_the_unread_divider() -> None:
    shown = timeline(unread=True)
    shown.joining("lobby", first=True)
    replay = [
        msg(1, "bob", "old"),
        msg(2, "alice", "mine, after my marker", edited_at=AT),
        msg(3, "bob", "new", reactions=(Reaction("👍", ("alice",)),)),
        # The replay read messages 2 and 3 as they are now: these entries are in them already.
        change(4, RelationKind.EDIT, 2, text="mine, after my marker"),
        change(5, RelationKind.REACT, 3, emoji="👍"),
        msg(6, "carol", "newer", reply_to="id3"),
    ]
    for entry in replay:
        assert shown.message(entry) == []  # held until RoomJoined says what was read
    lines = shown.joined(RoomJoined("lobby", ("alice",), Position(6, "e"), 1, read_seq=1))
    assert [untimed(line.plain) for line in lines] == [
        "bob: old",
        "alice: mine, after my marker (edited)",
        render.UNREAD_DIVIDER,  # before the first message of someone else after the marker
        "bob: new\n  ↳ 👍 alice",
        "  ┌ bob: new\n" + f"{AT.astimezone():%H:%M:%S} carol: newer",
    ]
    # Read before the divider: dimmed; unread: not.
    assert dimmed(lines[0], "old")
    assert not dimmed(lines[3], "new")

    # After a lost stream the room replays what was missed: an edit of a message shown before
    # is shown once; a message read in that replay is in its current state already.
    shown.reconnecting(["lobby"])
    assert plain(shown.message(change(7, RelationKind.EDIT, 6, "carol", text="newest"))) == [
        f"{AT.astimezone():%H:%M:%S} carol: newest (edited)"
    ]
    assert len(shown.message(msg(8, "bob", "while away", edited_at=AT))) == 1
    assert shown.message(change(9, RelationKind.EDIT, 8, "bob", text="while away")) == []
    assert shown.joined(RoomJoined("lobby", (), Position(9, "e"))) == []
    # Live again: every change is shown.
    assert len(shown.message(change(10, RelationKind.EDIT, 8, "bob", text="back"))) == 1
    # ... once: the same change again (a replay page read late, then live) changes nothing.
    assert shown.message(change(10, RelationKind.EDIT, 8, "bob", text="back")) == []


def test_no_divider_when_nothing_is_unread_or_when_nobody_reads() -> None:
    for read_seq, unread in ((2, True), (0, False)):
        shown = timeline(unread=unread)
        shown.joining("lobby", first=True)
        shown.message(msg(1, "bob"))
        shown.message(msg(2, "bob"))
        lines = shown.joined(RoomJoined("lobby", (), Position(2, "e"), read_seq=read_seq))
        assert render.UNREAD_DIVIDER not in plain(lines)
        assert len(lines) == 2


def test_room_log_is_bounded_and_finds_the_users_last_message() -> None:
    log = RoomLog(limit=3)
    for seq, sender in enumerate(("alice", "bob", "alice", "bob"), start=1):
        log.add(msg(seq, sender))
    assert len(log) == 3
    assert log.at(1) is None
    assert log.by_id("id1") is None
    last = log.last_of("alice")
    assert last is not None
    assert last.seq == 3
    log.apply(change(5, RelationKind.DELETE, 3))
    assert log.last_of("alice") is None
    assert log.apply(change(6, RelationKind.EDIT, 1)) is None  # no longer kept


def test_typists_expire_and_read_well() -> None:
    now = [100.0]
    typists = Typists(clock=lambda: now[0])
    typists.update(Typing("lobby", "bob", True, 6.0))
    now[0] += 1
    typists.update(Typing("lobby", "carol", True, 6.0))
    typists.update(Typing("games", "dave", True, 6.0))
    assert typists.names("lobby") == ["bob", "carol"]
    assert typists.next_expiry() == pytest.approx(5.0)
    now[0] += 5.5  # bob's notice expired, carol's not
    assert typists.names("lobby") == ["carol"]
    assert typists.stopped("lobby", "carol")
    assert not typists.stopped("lobby", "carol")
    typists.update(Typing("games", "dave", False, 0))
    assert typists.names("games") == []
    assert typists.next_expiry() is None
    # A notice that expired in a room not shown asks for no redraw (it used to ask every
    # 50 ms until that room was shown again).
    typists.update(Typing("games", "erin", True, 1.0))
    now[0] += 2
    assert typists.names("lobby") == []
    assert typists.next_expiry() is None

    assert typing_line([]) == ""
    assert typing_line(["bob"]) == "bob is typing…"
    assert typing_line(["bob", "carol"]) == "bob and carol are typing…"
    assert typing_line(["a", "b", "c"]) == "a, b and c are typing…"
    assert typing_line(["a", "b", "c", "d", "e"]) == "a, b and 3 others are typing…"


def test_typing_notices_go_out_at_most_every_few_seconds_and_stop_on_send() -> None:
    now = [0.0]
    sender = TypingSender(clock=lambda: now[0])
    assert sender.edited("lobby", "h") == [("lobby", True)]
    assert sender.edited("lobby", "he") == []
    now[0] += TYPING_REFRESH - 0.1
    assert sender.edited("lobby", "hel") == []
    now[0] += 0.2
    assert sender.edited("lobby", "hell") == [("lobby", True)]
    # Cleared: stopped.
    assert sender.edited("lobby", "") == [("lobby", False)]
    assert sender.edited("lobby", "") == []
    # Another room: stopped here, typing there.
    sender.edited("lobby", "x")
    assert sender.edited("games", "xy") == [("lobby", False), ("games", True)]
    assert sender.sent() == [("games", False)]
    assert sender.sent() == []
    # Commands are not messages being written (but /me and /reply are).
    assert sender.edited("lobby", "/who") == []
    assert composes("/me waves")
    assert composes("/reply 3 yes")
    assert composes("//slash")
    assert not composes("/rooms")
    assert not composes("   ")


# -- piped: the commands ------------------------------------------------------------------------


@pytest.fixture
async def piped(server_process: ServerProcess) -> AsyncIterator[StartJoin]:
    """`await piped(*options, name="alice")`: a piped `grpcchat join` on the server."""
    async with piped_joins(server_process.addr) as start:
        yield start


@pytest.fixture
async def chat(server_process: ServerProcess) -> AsyncIterator[ChatClient]:
    async with ChatClient(ClientConfig(addr=server_process.addr, timeout=5.0)) as client:
        yield client


async def test_edit_delete_react_and_reply_from_the_session(
    server_process: ServerProcess, chat: ChatClient, piped: StartJoin
) -> None:
    alice = await piped()
    alice.type("frist post")
    await alice.expect(said("alice", "frist post"))
    # No handle: her last message.
    alice.type("/edit first post")
    await alice.expect(said("alice", "first post (edited)"))
    alice.type("/react 1 👍", "/reply 1 replying to myself")
    await alice.expect(r"  ↳ 1 👍 alice")
    await alice.expect(r"  ┌ alice: first post")
    await alice.expect(said("alice", "replying to myself"))
    alice.type("/unreact 1 👍")
    await alice.expect(r"  ↳ 1 no reactions")

    # Someone else's changes arrive live too.
    done = run_cli(
        "send", "--addr", server_process.addr, "-n", "bob", "--react", "1", "🎉", timeout=15
    )
    assert done.returncode == 0, done.stderr
    await alice.expect(r"  ↳ 1 🎉 bob")
    done = run_cli("send", "--addr", server_process.addr, "-n", "bob", "bob's", timeout=15)
    assert done.returncode == 0, done.stderr
    await alice.expect(said("bob", "bob's"))

    # Not hers: refused, one line; the session goes on.
    alice.type("/edit 7 mine now", "/delete 7", "/react 99 👍")
    await alice.expect(r"error: only bob may edit their message \w+")
    await alice.expect(r"error: only bob may delete their message \w+")
    await alice.expect(r"error: no message 99 in #lobby \(it may be past retention\)")
    # /delete without a handle: her last message (the reply, seq 4).
    alice.type("/delete")
    await alice.expect(said("alice", "message deleted"))
    [_, reply, _] = await chat.latest()
    assert reply.deleted

    alice.type("/edit 4 too late", "/edit 1", "/react 1", "/react 5 👍")
    shown = await alice.settle()
    # One line each, in any order (a command that needs no server answers at once).
    assert sorted(shown) == sorted(
        [
            "error: usage: /edit [N] TEXT",
            "error: usage: /react N EMOJI",
            f"error: message {reply.id} was deleted: nothing to edit",
            "error: 5 in #lobby is not a message but a change of one (unreact)",
        ]
    )

    history = run_cli("history", "--addr", server_process.addr, "--json", timeout=15)
    objects = [json.loads(line) for line in history.stdout.splitlines()]
    assert [(o["seq"], o["text"], o["edited"], o["deleted"]) for o in objects] == [
        (1, "first post", True, False),
        (4, "", False, True),
        (7, "bob's", False, False),
    ]
    assert objects[0]["reactions"] == {"🎉": ["bob"]}
    # Off a terminal, the code of the first thing refused: not hers to edit.
    assert await alice.quit() == 6


async def test_rooms_shows_unread_counts(chat: ChatClient, piped: StartJoin) -> None:
    await chat.send("bob", "one", "games")
    await chat.send("bob", "two", "games")
    alice = await piped()
    alice.type("/rooms")
    await alice.expect(r"\s*room\s+members\s+messages\s+unread\s*")
    await alice.expect(r"\s*#games\s+0\s+2\s+2\s*")
    # Another session of hers read one: the count follows.
    await chat.mark_read("games", 1, "alice")
    alice.type("/rooms")
    await alice.expect(r"\s*#games\s+0\s+2\s+1\s*")


# -- in a terminal --------------------------------------------------------------------------------


@pytest.fixture
def join() -> Iterator[Callable[..., Terminal]]:
    """`join(addr, name)`: `grpcchat join` in a 24x120 pseudo-terminal, ready for input."""
    started: list[Terminal] = []

    def start(addr: str, name: str = "alice", *options: str) -> Terminal:
        argv = grpcchat_command("join", "--name", name, "--addr", addr, "--timeout", "5", *options)
        terminal = Terminal(argv, cli_env(TERM="xterm-256color"))
        started.append(terminal)
        terminal.wait_for_text("type a message and press Enter")
        terminal.wait_for(lambda: terminal.cursor_line() == ">", "the prompt")
        return terminal

    yield start
    for terminal in started:
        terminal.close()


def rows(terminal: Terminal, pattern: str) -> list[int]:
    return [i for i, line in enumerate(terminal.lines()) if re.fullmatch(pattern, line)]


def wait_row(terminal: Terminal, pattern: str, what: str) -> int:
    terminal.wait_for(lambda: bool(rows(terminal, pattern)), what)
    return rows(terminal, pattern)[-1]


def send(addr: str, name: str, *args: str) -> None:
    done = run_cli("send", "--addr", addr, "--name", name, *args, timeout=15)
    assert done.returncode == 0, done.stderr


def test_a_terminal_shows_handles_edits_replies_and_reactions(
    server_process: ServerProcess, join: Callable[..., Terminal]
) -> None:
    addr = server_process.addr
    alice = join(addr)
    alice.type("frist post\r")
    first = wait_row(alice, rf"   1 {TIME} alice: frist post", "alice's message with handle 1")
    alice.type("/edit 1 first post\r")
    edited = wait_row(alice, rf"   1 {TIME} alice: first post \(edited\)", "the edit")
    assert edited > first

    send(addr, "bob", "--reply-to", "1", "welcome!")
    quote = wait_row(alice, r"  ┌ 1 alice: first post", "the quote of what bob answers")
    reply = wait_row(alice, rf"   3 {TIME} bob: welcome!", "bob's reply")
    assert reply == quote + 1
    send(addr, "bob", "--react", "1", "👍")
    wait_row(alice, r"  ↳ 1 👍 bob", "bob's reaction")
    alice.type("/delete\r")
    wait_row(alice, rf"   1 {TIME} alice: message deleted", "the tombstone")
    assert alice.text().count("frist post") == 2  # her line, and what she typed


def test_the_toolbar_shows_who_is_typing_and_clears(
    server_process: ServerProcess, join: Callable[..., Terminal]
) -> None:
    alice = join(server_process.addr)
    bob = join(server_process.addr, "bob")

    def toolbar() -> str:
        return alice.screen.display[-1].strip()

    bob.type("hel")
    alice.wait_for(lambda: toolbar() == "bob is typing…", "bob in alice's toolbar")
    # On the bottom row, apart from the scrollback and the input line.
    assert [line.strip() for line in alice.lines() if "typing" in line] == ["bob is typing…"]
    assert alice.lines()[-1].strip() == "bob is typing…"
    assert alice.cursor_line() == ">"
    alice.type("hi")
    bob.wait_for(lambda: bob.screen.display[-1].strip() == "alice is typing…", "alice in bob's")

    bob.type("\x15")  # Ctrl-U clears bob's line: he stopped
    alice.wait_for(lambda: toolbar() == "", "bob's notice to go")
    bob.type("there\r")
    wait_row(alice, rf"{HANDLE}{TIME} bob: there", "bob's message")
    # Alice's half-typed text survived all of it, and bob's message ended his notice.
    alice.wait_for(lambda: alice.cursor_line() == "> hi", "alice's input line")
    assert toolbar() == ""
    assert [line for line in alice.lines() if "typing" in line] == []
    alice.type("\r")
    wait_row(bob, rf"{HANDLE}{TIME} alice: hi", "alice's message at bob's")
    bob.wait_for(lambda: bob.screen.display[-1].strip() == "", "alice's notice to go")


def read_and_leave(addr: str, join: Callable[..., Terminal]) -> None:
    """bob says "read this"; alice joins, reads it, and leaves."""
    send(addr, "bob", "read this")
    alice = join(addr)
    wait_row(alice, rf"   1 {TIME} bob: read this", "the replayed message")
    # Her marker moves to what she was shown (bounded wait: the marker is debounced).
    until_read(addr)
    alice.type("exit\r")
    assert alice.wait_exit() == 0


def until_read(addr: str) -> None:
    deadline = time.monotonic() + 5
    while unread(addr, "alice") != 0:
        assert time.monotonic() < deadline, "alice's read marker did not move"
        time.sleep(0.1)


def test_entering_a_room_with_unread_messages_shows_where_they_start(
    server_process: ServerProcess, join: Callable[..., Terminal]
) -> None:
    addr = server_process.addr
    read_and_leave(addr, join)

    send(addr, "bob", "new one")
    send(addr, "bob", "newer one")
    assert unread(addr, "alice") == 2
    again = join(addr)
    read = wait_row(again, rf"   1 {TIME} bob: read this", "the message read before")
    divider = again.row_of(render.UNREAD_DIVIDER)
    new = wait_row(again, rf"   2 {TIME} bob: new one", "the first unread message")
    assert read < divider == new - 1
    assert rows(again, rf"   3 {TIME} bob: newer one") == [new + 1]
    until_read(addr)


@pytest.mark.parametrize("history", ["3", "0"])
def test_more_unread_than_the_replay_holds_are_all_shown_from_the_first(
    server_process: ServerProcess, join: Callable[..., Terminal], history: str
) -> None:
    """Back to a room with more unread messages than --history replays, the divider sat above
    the replay's first, the ones before it were never shown, and the marker moved past them
    (with --history 0, at the first live message). And a deleted message is no unread one
    (rooms counts none): the divider went above it."""
    addr = server_process.addr
    read_and_leave(addr, join)

    send(addr, "bob", "gone")
    send(addr, "bob", "--delete", "2")
    lines = "".join(f"unread {n}\n" for n in range(1, 9))
    assert run_cli("send", "--addr", addr, "--name", "bob", stdin=lines).returncode == 0
    assert unread(addr, "alice") == 8
    again = join(addr, "alice", "--history", history)
    first = wait_row(again, rf"   4 {TIME} bob: unread 1", "the first unread message")
    assert again.row_of(render.UNREAD_DIVIDER) == first - 1
    assert rows(again, rf"   2 {TIME} bob: message deleted") == [first - 2]
    for n in range(2, 9):
        assert rows(again, rf"\s+{n + 3} {TIME} bob: unread {n}") == [first + n - 1]
    until_read(addr)


def unread(addr: str, name: str) -> int:
    result = run_cli("rooms", "--addr", addr, "--name", name, "--json", timeout=15)
    assert result.returncode == 0, result.stderr
    counts = {r["name"]: r["unread"] for r in json.loads(result.stdout)}
    return int(counts.get("lobby", 0))
