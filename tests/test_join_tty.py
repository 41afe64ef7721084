"""`grpcchat join` in a real pseudo-terminal, against a server subprocess.

What alice sees is rendered by pyte (tests/tty.py) so the tests can assert on the screen: the
rows, where the cursor is, the colours. What others receive is read from an observer: a second
`grpcchat join` with stdin a pipe, which prints each message of the room as one plain line.
"""

from __future__ import annotations

import re
import signal
import socket
import subprocess
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from pexpect.popen_spawn import PopenSpawn

from grpcchat.cli import render
from tests.conftest import ServerProcess, cli_env, grpcchat_command, send_as
from tests.tty import Terminal, rendered_style

pytestmark = pytest.mark.timeout(20)

TIME = r"\d\d:\d\d:\d\d"
# In a terminal a room message's line starts with its handle: its seq, right-aligned.
HANDLE = r" *\d+ "
# Where the time starts on such a line.
TIME_COLUMN = render.HANDLE_WIDTH + 1
READY_HINT = "type a message and press Enter"


# A POSIX TZ rule (no tz database needed): UTC+05:45, so "local time" differs from UTC.
CHILD_TZ = "XST-05:45"
CHILD_OFFSET = timezone(timedelta(hours=5, minutes=45))


def _tty_env(colour: bool) -> dict[str, str]:
    env = cli_env(TERM="xterm-256color", TZ=CHILD_TZ)
    if colour:
        for name in ("NO_COLOR", "FORCE_COLOR", "COLORTERM", "TTY_COMPATIBLE"):
            env.pop(name, None)
    return env


@pytest.fixture
def join() -> Iterator[Callable[..., Terminal]]:
    """Start `grpcchat join --name NAME --addr ADDR` in a 24x120 terminal."""
    started: list[Terminal] = []

    def start(addr: str, name: str = "alice", *, colour: bool = False) -> Terminal:
        argv = grpcchat_command("join", "--name", name, "--addr", addr, "--timeout", "5")
        terminal = Terminal(argv, _tty_env(colour))
        started.append(terminal)
        return terminal

    yield start
    for terminal in started:
        terminal.close()


def wait_for_prompt(terminal: Terminal, typed: str = "", timeout: float = 5.0) -> None:
    """Wait until the input line shows `> ` + `typed` with the cursor at its end."""
    expected = f"> {typed}".rstrip()

    def ready() -> bool:
        return terminal.cursor_line() == expected and terminal.screen.cursor.x == 2 + len(typed)

    terminal.wait_for(ready, f"the prompt {expected!r}", timeout)


def join_ready(terminal: Terminal) -> Terminal:
    terminal.wait_for_text(READY_HINT)
    wait_for_prompt(terminal)
    return terminal


class Observer:
    """A non-interactive `grpcchat join`: every message of the room is one line on stdout."""

    def __init__(self, addr: str, name: str = "obs") -> None:
        argv = grpcchat_command("join", "--name", name, "--addr", addr)
        self.name = name
        self.spawn = PopenSpawn(argv, env=cli_env(), encoding="utf-8", timeout=5)
        # Lines are read and sent only once the subscription is live, and a subscriber gets
        # every message posted after that: seeing its own line proves it is listening.
        self.spawn.sendline("ready")
        self.expect_message(name, "ready")

    def expect_message(self, sender: str, text: str) -> None:
        self.spawn.expect(re.compile(rf"{TIME} {re.escape(sender)}: {re.escape(text)}\r?\n"))

    def close(self) -> None:
        self.spawn.sendeof()
        try:
            self.spawn.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.spawn.proc.kill()
            self.spawn.proc.wait()


@pytest.fixture
def observer(server_process: ServerProcess) -> Iterator[Observer]:
    watching = Observer(server_process.addr)
    yield watching
    watching.close()


def message_rows(terminal: Terminal, sender: str, text: str) -> list[str]:
    pattern = re.compile(rf"{HANDLE}{TIME} {re.escape(sender)}: {re.escape(text)}")
    return [line for line in terminal.lines() if pattern.fullmatch(line)]


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_incoming_message_prints_above_half_typed_input(
    server_process: ServerProcess, observer: Observer, join: Callable[..., Terminal]
) -> None:
    alice = join_ready(join(server_process.addr))
    alice.type("half-typ")
    wait_for_prompt(alice, "half-typ")

    send_as(server_process.addr, "bob", "incoming!")

    def redrawn() -> bool:
        return bool(message_rows(alice, "bob", "incoming!")) and alice.cursor_line() == (
            "> half-typ"
        )

    alice.wait_for(redrawn, "bob's line above the redrawn prompt")
    wait_for_prompt(alice, "half-typ")
    lines = alice.lines()
    # The prompt, still holding the half-typed text, is the last line, bob's line just above
    # it, and the half-typed text is nowhere else (not mixed into bob's line).
    assert lines[-1] == "> half-typ", alice.dump()
    assert alice.screen.cursor.y == len(lines) - 1
    assert re.fullmatch(rf"{HANDLE}{TIME} bob: incoming!", lines[-2]), alice.dump()
    assert [line for line in lines if "half-typ" in line] == ["> half-typ"], alice.dump()

    alice.type("ed\r")
    observer.expect_message("alice", "half-typed")
    alice.wait_for(lambda: bool(message_rows(alice, "alice", "half-typed")), "alice's message")


@pytest.mark.parametrize(
    "leave",
    [
        pytest.param("exit\r", id="exit"),
        pytest.param("/quit\r", id="quit"),
        pytest.param("\x04", id="ctrl-d"),
        pytest.param("\x03", id="ctrl-c"),
    ],
)
def test_message_typed_just_before_leaving_is_delivered(
    server_process: ServerProcess,
    observer: Observer,
    join: Callable[..., Terminal],
    leave: str,
) -> None:
    alice = join_ready(join(server_process.addr))
    # One write: the leave key arrives while the message is still being queued and sent.
    alice.type("last words\r" + leave)
    assert alice.wait_exit() == 0, alice.dump()
    observer.expect_message("alice", "last words")
    assert "error" not in alice.text(), alice.dump()


def test_leaving_waits_for_a_send_the_server_has_not_accepted_yet(
    server_process: ServerProcess, observer: Observer, join: Callable[..., Terminal]
) -> None:
    alice = join_ready(join(server_process.addr))
    server_process.process.send_signal(signal.SIGSTOP)  # the send hangs until SIGCONT
    try:
        alice.type("slow words\r")
        wait_for_prompt(alice)
        alice.type("exit\r")
        alice.wait_for(
            lambda: alice.cursor_line() == "" and "> exit" in alice.lines()[-1:],
            "'exit' to be accepted",
        )
        # Not an event to wait for but an absence: alice must still be waiting for the send.
        alice.settle(quiet=0.5)
        assert not alice.exited, f"left before the send was accepted:\n{alice.dump()}"
    finally:
        server_process.process.send_signal(signal.SIGCONT)
    assert alice.wait_exit() == 0, alice.dump()
    observer.expect_message("alice", "slow words")


def test_own_message_is_shown_once_with_local_time_and_colour(
    server_process: ServerProcess, join: Callable[..., Terminal]
) -> None:
    alice = join_ready(join(server_process.addr, colour=True))
    alice.type("mine\r")
    alice.wait_for(lambda: bool(message_rows(alice, "alice", "mine")), "alice's message")
    # Anything printed twice would be on screen before a line sent after it.
    wait_for_prompt(alice)
    alice.type("next\r")
    alice.wait_for(lambda: bool(message_rows(alice, "alice", "next")), "alice's next message")

    rows = message_rows(alice, "alice", "mine")
    assert len(rows) == 1, alice.dump()
    # Apart from the echo of what she typed, the text appears nowhere else.
    others = [line for line in alice.lines() if "mine" in line and line not in rows]
    assert others == ["> mine"], alice.dump()

    shown = datetime.strptime(rows[0][TIME_COLUMN : TIME_COLUMN + 8], "%H:%M:%S")
    now = datetime.now(CHILD_OFFSET)
    seconds = (now.hour * 3600 + now.minute * 60 + now.second) - (
        shown.hour * 3600 + shown.minute * 60 + shown.second
    )
    assert min(seconds % 86400, -seconds % 86400) <= 5, (
        f"{rows[0]!r} is not the local time ({now:%H:%M:%S})"
    )

    row = alice.row_of(rows[0])
    name_cells = alice.cells(row, TIME_COLUMN + 9, len("alice"))
    expected = rendered_style(render.sender_style("alice"))
    assert {(c.fg, c.bold) for c in name_cells} == {(expected.fg, expected.bold)}
    assert expected.fg != "default"
    text_cells = alice.cells(row, TIME_COLUMN + 9 + len("alice: "), len("mine"))
    assert {c.fg for c in text_cells} == {"default"}


def test_unreachable_server_prints_one_red_line_and_exits_3(
    join: Callable[..., Terminal],
) -> None:
    addr = f"127.0.0.1:{closed_port()}"
    alice = join(addr, colour=True)
    assert alice.wait_exit() == 3, alice.dump()
    rows = [line for line in alice.lines() if line.strip()]
    # One message: Rich may fold it over several rows when it is wider than the terminal.
    assert len([row for row in rows if "error" in row]) == 1, alice.dump()
    assert rows[0].startswith("error: cannot reach a chat server at "), alice.dump()
    message = "".join("".join(rows).split())
    assert f"cannotreachachatserverat{addr}" in message, alice.dump()
    assert "Traceback" not in alice.raw.decode(errors="replace")
    red = rendered_style("bold red")
    for row in rows:
        cells = alice.cells(alice.row_of(row), 0, len(row))
        assert {(c.fg, c.bold) for c in cells if c.data.strip()} == {(red.fg, red.bold)}, row


def test_reconnects_when_the_server_returns_on_the_same_port(
    join: Callable[..., Terminal], tmp_path: Path
) -> None:
    # One history across both servers: alice resumes where she was, nothing to report.
    first = ServerProcess("--grace", "1", "--data-dir", str(tmp_path))
    second: ServerProcess | None = None
    try:
        alice = join_ready(join(first.addr))
        assert alice.text().count("connected as alice") == 1
        first.stop()
        alice.wait_for_text("reconnecting")
        assert re.search(r"reconnecting in \d+\.\ds\.\.\. \(.+\)", alice.text()), alice.dump()

        second = ServerProcess("--grace", "1", "--data-dir", str(tmp_path), port=first.port)
        assert second.port == first.port

        def back() -> bool:
            lines = alice.lines()
            last_lost = max(i for i, line in enumerate(lines) if "reconnecting" in line)
            return any("connected as alice" in line for line in lines[last_lost:])

        alice.wait_for(back, "'connected' after the last 'reconnecting'", timeout=8)
        send_as(second.addr, "bob", "welcome back")
        alice.wait_for(lambda: bool(message_rows(alice, "bob", "welcome back")), "bob's message")
        wait_for_prompt(alice)
        assert "no longer available" not in alice.text()
    finally:
        first.stop()
        if second is not None:
            second.stop()


def test_join_says_where_plain_lines_go_once_in_several_rooms(
    server_process: ServerProcess, join: Callable[..., Terminal]
) -> None:
    """The prompt does not name the room it posts to: switching rooms printed nothing."""
    alice = join_ready(join(server_process.addr))
    alice.type("/join games\r")
    alice.wait_for_text("plain lines now go to #games")
    alice.type("/join lobby\r")  # joined already: a switch
    alice.wait_for_text("plain lines now go to #lobby")
    alice.type("back in the lobby\r")
    alice.wait_for(
        lambda: any(line.endswith("#lobby alice: back in the lobby") for line in alice.lines()),
        "alice's message, labelled with its room",
    )


def test_a_bad_name_at_the_prompt_is_asked_again(server_process: ServerProcess) -> None:
    """A typo at the name prompt ended the command (exit 4): it is now asked again."""
    argv = grpcchat_command("join", "--addr", server_process.addr, "--timeout", "5")
    terminal = Terminal(argv, _tty_env(colour=False))
    try:
        terminal.wait_for_text("Enter your name:")
        terminal.type("x" * 40 + "\r")
        terminal.wait_for_text("error: name is 40 characters long; the limit is 32")
        terminal.wait_for(
            lambda: terminal.lines()[-1].startswith("Enter your name:"), "the prompt again"
        )
        terminal.type("carol\r")
        join_ready(terminal)
    finally:
        terminal.close()
