"""`grpcchat serve` logs: JSON lines for shippers (message text only when asked), plain lines in
a pipe, Rich on a terminal; a real server in a subprocess, real clients chatting with it."""

from __future__ import annotations

import ast
import asyncio
import dataclasses
import io
import json
import logging
import re
import signal
import subprocess
import sys
import time
from collections import deque
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

import grpcchat
from grpcchat.cli.logformat import json_formatter, plain_formatter
from grpcchat.cli.serverlog import (
    RESERVE,
    ChatLogHandler,
    _BatchingStreamHandler,
    _LogWriter,
    _not_on_terminal,
    _SkippingQueueHandler,
)
from grpcchat.client import ChatClient
from grpcchat.client.config import ClientConfig
from grpcchat.core.models import Message
from grpcchat.server.chatlog import log_accepted
from tests.conftest import ServerProcess, cli_env, run_cli, run_cli_async
from tests.helpers import Follower

ROOM_TEXT = "room-secret-4711"
DM_TEXT = "dm-secret-0815"
PLAIN_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ (DEBUG|INFO|WARNING|ERROR|CRITICAL) ")


def stop(server: ServerProcess, sig: signal.Signals = signal.SIGINT) -> str:
    """Signal the server, wait for it to drain and exit; its whole stderr."""
    try:
        server.process.send_signal(sig)
        _, err = server.process.communicate(timeout=15)
    finally:
        server.stop()
    assert server.process.returncode == 0, err
    return err


async def chat(addr: str) -> None:
    """bob posts in #lobby and DMs alice, who is connected and receives both."""
    async with (
        ChatClient(ClientConfig(addr=addr, timeout=5.0)) as client,
        Follower(client.session("alice")) as alice,
    ):
        sent = await run_cli_async("send", "--addr", addr, "--name", "bob", ROOM_TEXT, timeout=10)
        assert sent.returncode == 0, sent.stderr
        dm = await run_cli_async(
            "send", "--addr", addr, "--name", "bob", "--to", "alice", DM_TEXT, timeout=10
        )
        assert dm.returncode == 0, dm.stderr
        got = await alice.messages(2)
        assert sorted(m.text for m in got) == sorted([ROOM_TEXT, DM_TEXT])


def json_lines(err: str) -> list[dict[str, Any]]:
    """Every stderr line, each parsed on its own."""
    lines = err.splitlines()
    assert lines
    records = [json.loads(line) for line in lines]
    for record in records:
        assert {"ts", "level", "logger", "event"} <= record.keys(), record
        assert record["ts"].endswith("Z")
        assert datetime.fromisoformat(record["ts"]).utcoffset().total_seconds() == 0
        assert re.fullmatch(r"[a-z]+(_[a-z]+)*", record["event"]), record
    return records


def by_event(records: list[dict[str, Any]], event: str) -> dict[str, Any]:
    found = [r for r in records if r["event"] == event]
    assert len(found) == 1, (event, records)
    return found[0]


def serve_chat_and_stop(*args: str) -> tuple[ServerProcess, str]:
    server = ServerProcess("--log-format", "json", "--rate", "0", *args)
    try:
        asyncio.run(chat(server.addr))
    except BaseException:
        server.stop()
        raise
    return server, stop(server)


def test_json_logs_parse_line_by_line_and_keep_message_text_out() -> None:
    server, err = serve_chat_and_stop()
    records = json_lines(err)
    assert ROOM_TEXT not in err
    assert DM_TEXT not in err
    assert not [r for r in records if "text" in r]

    events = [r["event"] for r in records]
    assert events[0] == "server_started"
    assert events[-1] == "server_stopped"
    started = by_event(records, "server_started")
    assert started["port"] == server.port
    assert started["address"] == f"127.0.0.1:{server.port}"
    assert (started["store"], started["tls"], started["auth"]) == ("memory://", False, False)
    assert started["logger"] == "grpcchat.server"
    assert started["level"] == "info"

    message = by_event(records, "message")
    assert message["logger"] == "grpcchat.messages"
    assert (message["room"], message["sender"], message["seq"]) == ("lobby", "bob", 1)
    assert re.fullmatch(r"[0-9a-f]{32}", message["id"])
    assert "message" not in message  # the rendered line carries the text

    direct = by_event(records, "direct_message")
    assert (direct["sender"], direct["recipient"]) == ("bob", "alice")
    assert "message" not in direct

    draining = by_event(records, "draining")
    assert draining["grace_seconds"] == 5.0
    assert draining["message"].startswith("shutting down: draining for up to 5.0s")
    assert by_event(records, "server_stopped")["message"] == "server stopped"


def test_json_logs_carry_the_text_with_log_messages() -> None:
    _, err = serve_chat_and_stop("--log-messages")
    records = json_lines(err)
    assert by_event(records, "message")["text"] == ROOM_TEXT
    assert by_event(records, "direct_message")["text"] == DM_TEXT


def test_text_logs_in_a_pipe_are_plain_lines() -> None:
    server = ServerProcess("--log-messages")  # changes nothing in text mode
    long_text = "x" * 120
    for text in ("hi [bold]there", long_text, "two\nlines"):
        done = run_cli("send", "--addr", server.addr, "--name", "alice", text, timeout=10)
        assert done.returncode == 0, done.stderr
    err = stop(server, signal.SIGTERM)

    assert "\x1b" not in err
    lines = err.splitlines()
    assert all(PLAIN_LINE.match(line) for line in lines), lines
    said = [line.split(" ", 2)[2] for line in lines]
    assert said[0] == f"listening on {server.addr}"
    assert '🟢 [alice]: "hi [bold]there"  #lobby' in said
    assert f'🟢 [alice]: "{long_text}"  #lobby' in said  # no wrapping at 80 columns
    assert '🟢 [alice]: "two\\nlines"  #lobby' in said  # a line break cannot forge a line
    assert said[-1] == "server stopped"


@pytest.mark.parametrize(
    ("args", "env"),
    [(["--log-format", "xml"], {}), ([], {"GRPCCHAT_LOG_FORMAT": "xml"})],
)
def test_a_bad_log_format_is_one_line_and_exit_2(args: list[str], env: dict[str, str]) -> None:
    done = run_cli("serve", "--port", "0", "--store", "memory://", *args, env=cli_env(**env))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == ["error: unknown log format 'xml'; use text or json"]
    assert done.stdout == ""


# The formatters and handlers alone, on records made as the server library makes them.


def message_record(text: str = "hi") -> logging.LogRecord:
    return logging.makeLogRecord(
        {
            "name": "grpcchat.messages",
            "levelno": logging.INFO,
            "levelname": "INFO",
            "msg": '🟢 [%s]: "%s"',
            "args": ("alice", text),
            "event": "message",
            "room": "lobby",
            "sender": "alice",
            "seq": 3,
            "id": "abc",
            "text": text,
            "created": 1796158800.25,  # 2026-12-01T21:00:00.250Z
        }
    )


def test_json_formatter_fields_and_privacy() -> None:
    line = json_formatter().format(message_record("secret"))
    assert json.loads(line) == {
        "ts": "2026-12-01T21:00:00.250Z",
        "level": "info",
        "logger": "grpcchat.messages",
        "event": "message",
        "room": "lobby",
        "sender": "alice",
        "seq": 3,
        "id": "abc",
    }
    assert "secret" not in line
    shown = json.loads(json_formatter(log_messages=True).format(message_record("secret")))
    assert shown["text"] == "secret"
    assert "message" not in shown


def test_json_formatter_renders_any_record_and_its_traceback_on_one_line() -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        exc_info = sys.exc_info()
    record = logging.LogRecord("grpc.aio", logging.ERROR, "", 0, "it broke: %s", ("x",), exc_info)
    line = json_formatter().format(record)
    assert "\n" not in line
    fields = json.loads(line)
    assert (fields["event"], fields["level"], fields["message"]) == ("log", "error", "it broke: x")
    assert "RuntimeError: boom" in fields["exception"]


def test_plain_formatter_line() -> None:
    assert plain_formatter().format(message_record()) == (
        '2026-12-01T21:00:00Z INFO 🟢 [alice]: "hi"  #lobby'
    )


def test_plain_formatter_keeps_a_traceback_and_a_line_break_in_the_text() -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        record = logging.LogRecord("grpc.aio", logging.ERROR, "", 0, "it broke", (), sys.exc_info())
    record.created = 1796158800.25
    lines = plain_formatter().format(record).splitlines()
    assert lines[0] == "2026-12-01T21:00:00Z ERROR it broke"
    assert lines[1] == "Traceback (most recent call last):"
    assert lines[-1] == "RuntimeError: boom"
    assert plain_formatter().format(message_record("one\ntwo")).count("\n") == 0


def _web_request(path: str) -> logging.LogRecord:
    record = logging.LogRecord(
        "grpcchat.web.access", logging.DEBUG, "", 0, "%s %s %s", ("GET", path, 404), None
    )
    record.created = 1796158800.25
    return record


# A URL path the web port logs is the client's choice, decoded: ESC, CR, LF, a C1 CSI.
HOSTILE_PATH = "/static/\x1b]0;PWNED\x07\x1b[2J\r\nINFO fake\x9b31m"


def test_plain_lines_escape_every_control_character() -> None:
    """Only CR and LF were escaped: a request for a path with escape sequences set the
    terminal's title and cleared the screen of an operator reading the log (--log-level
    debug)."""
    line = plain_formatter().format(_web_request(HOSTILE_PATH))
    assert line == (
        "2026-12-01T21:00:00Z DEBUG GET /static/\\x1b]0;PWNED\\x07\\x1b[2J\\r\\nINFO "
        "fake\\x9b31m 404"
    )


def test_rich_lines_escape_every_control_character() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=200, no_color=True)
    ChatLogHandler(console=console, show_path=False, markup=False).handle(
        _web_request(HOSTILE_PATH)
    )
    shown = re.sub(r"\x1b\[[0-9;]*m", "", out.getvalue())  # Rich's own styles
    assert "GET /static/\\x1b]0;PWNED\\x07\\x1b[2J\\r\\nINFO fake\\x9b31m 404" in shown
    assert not set(shown) & {"\x07", "\x9b", "\r"}
    assert shown.count("\n") == 1


class CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


def test_batching_handler_writes_its_lines_at_once_when_flushed() -> None:
    stream = CountingStream()
    handler = _BatchingStreamHandler(stream)
    handler.setFormatter(plain_formatter())
    for n in range(3):
        handler.handle(message_record(f"line {n}"))
    assert stream.getvalue() == ""  # held until the log thread writes them
    handler.flush()  # logging.shutdown's: writes nothing (only the log thread writes)
    assert stream.getvalue() == ""
    handler.write_batch()
    assert stream.writes == 1
    assert [line.split('"')[1] for line in stream.getvalue().splitlines()] == [
        "line 0",
        "line 1",
        "line 2",
    ]


def test_the_log_thread_writes_a_quiet_line_soon_and_loses_nothing_at_stop() -> None:
    stream = CountingStream()
    handler = _BatchingStreamHandler(stream)
    handler.setFormatter(plain_formatter())
    records: deque[logging.LogRecord] = deque()
    writer = _LogWriter(records, handler)
    writer.start()
    try:
        records.append(message_record("alone"))
        deadline = time.monotonic() + 5
        while "alone" not in stream.getvalue():  # written at the next tick, not held
            assert time.monotonic() < deadline, "a quiet line was held back"
            time.sleep(0.01)
        for n in range(2_000):
            records.append(message_record(f"busy {n}"))
    finally:
        writer.stop()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2_001
    assert lines[-1].endswith('"busy 1999"  #lobby')
    assert stream.writes < len(lines) / 10  # in batches


def test_the_log_thread_keeps_the_handlers_level() -> None:
    stream = CountingStream()
    handler = _BatchingStreamHandler(stream)
    handler.setLevel(logging.WARNING)
    records: deque[logging.LogRecord] = deque()
    writer = _LogWriter(records, handler)
    writer.start()
    records.append(message_record("chatter"))
    records.append(logging.makeLogRecord({"msg": "trouble", "levelno": logging.WARNING}))
    writer.stop()
    assert stream.getvalue() == "trouble\n"


def test_rich_handler_on_a_terminal_keeps_the_article_line() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=200, no_color=True)
    handler = ChatLogHandler(console=console, show_path=False, markup=False)
    handler.addFilter(_not_on_terminal)
    handler.handle(message_record("hello [bold]world"))
    started = logging.makeLogRecord({"msg": "listening on x", "event": "server_started"})
    handler.handle(started)  # the startup line on stdout says it already
    shown = re.sub(r"\x1b\[[0-9;]*m", "", out.getvalue())  # the sender's colour, the dim room
    assert '🟢 [alice]: "hello [bold]world"  #lobby' in shown
    assert "listening on" not in shown


def test_a_full_queue_skips_chat_lines_and_says_so_with_an_event() -> None:
    records: deque[logging.LogRecord] = deque()
    handler = _SkippingQueueHandler(records, capacity=2)
    for _ in range(3):
        handler.enqueue(message_record())  # the third finds the queue full: skipped
    assert handler.skipped == 1
    records.popleft()
    records.popleft()
    handler.enqueue(logging.makeLogRecord({"msg": "server stopped", "event": "server_stopped"}))
    note = json.loads(json_formatter().format(records.popleft()))
    assert (note["event"], note["skipped"], note["level"]) == ("log_lines_skipped", 1, "warning")


def test_a_warning_in_a_full_queue_takes_a_reserved_place_and_never_waits() -> None:
    """A warning waited on the event loop for room in a full queue: with a stderr nobody reads
    (a stalled shipper), for ever, and the whole server with it. Now it has RESERVE places more
    than chat lines, and past those it is counted like them."""
    records: deque[logging.LogRecord] = deque(message_record() for _ in range(RESERVE))
    handler = _SkippingQueueHandler(records, capacity=1)
    warning = logging.makeLogRecord({"msg": "disk full", "levelno": logging.WARNING})
    handler.enqueue(warning)  # the last reserved place
    assert records[-1] is warning
    handler.enqueue(message_record())  # a chat line: skipped since the queue passed capacity
    handler.enqueue(warning)  # no place left: skipped too, at once
    assert (handler.skipped, handler.skipped_other) == (1, 1)
    records.clear()
    handler.enqueue(logging.makeLogRecord({"msg": "server stopped"}))
    note = json.loads(json_formatter().format(records.popleft()))
    assert (note["event"], note["skipped"], note["skipped_other"]) == ("log_lines_skipped", 1, 1)
    assert note["message"] == (
        "1 message lines and 1 other lines were not logged: the log could not keep up"
    )


# A process that logs as the server does to a stderr nobody reads, then exits.
LOGS_INTO_A_STALLED_PIPE = """
import logging
from rich.console import Console
from grpcchat.cli.serverlog import configure_logging
configure_logging(logging.INFO, Console(stderr=True))
for n in range(15_000):
    logging.getLogger("grpcchat.messages").info("%s %s", "alice", "x" * 100)
logging.getLogger("grpcchat.server").warning("a warning")
print("exiting", flush=True)
"""


def test_a_process_whose_stderr_nobody_reads_still_exits() -> None:
    """The log thread, stuck writing, held the handler's lock (which `logging.shutdown` takes
    at exit) and sys.stderr's buffer (which Python flushes at exit): the process never ended."""
    child = subprocess.Popen(
        [sys.executable, "-c", LOGS_INTO_A_STALLED_PIPE],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=cli_env(),
    )
    try:
        assert child.wait(20) == 0
        assert child.stdout is not None
        assert child.stdout.read() == b"exiting\n"
    finally:
        child.kill()
        child.wait()


async def test_a_stderr_nobody_reads_never_stops_the_server() -> None:
    """The server's stderr is a pipe nobody reads (as a stalled log shipper's): once the pipe
    and the log's queue are full, it still answers, and it drains and exits at SIGTERM. It
    froze at the first line other than a chat line, and never exited."""
    server = ServerProcess("--rate", "0", "--grace", "1")
    try:
        lines = "".join(f"flood line {n} {'x' * 100}\n" for n in range(15_000))
        sent = await run_cli_async(
            "send", "--addr", server.addr, "--name", "flood", stdin=lines, timeout=60
        )
        assert sent.returncode == 0, sent.stderr
        async with ChatClient(ClientConfig(addr=server.addr, timeout=10)) as client:
            assert (await client.send("ann", "still answering")).message.seq == 15_001
        server.process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(server.process.wait, 20) == 0
    finally:
        server.stop()


def test_plain_lines_are_stamped_with_their_own_second() -> None:
    formatter = plain_formatter()
    stamps = []
    for created in (1_800_000_000.1, 1_800_000_000.9, 1_800_000_001.0):
        record = message_record()
        record.created = created
        stamps.append(formatter.format(record).split(" ")[0])
    assert stamps == ["2027-01-15T08:00:00Z", "2027-01-15T08:00:00Z", "2027-01-15T08:00:01Z"]


def test_an_accepted_message_is_logged_only_when_its_logger_is_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    said = Message("m1", "lobby", "ann", "hi", datetime.now(UTC), seq=1)
    whispered = dataclasses.replace(said, id="m2", room="", recipient="bob")
    with (
        caplog.at_level(logging.WARNING, logger="grpcchat.messages"),
        caplog.at_level(logging.INFO, logger="grpcchat.direct"),
    ):
        log_accepted(said)  # its logger is off: skipped before its fields are even built
        log_accepted(whispered)
    assert [(record.name, record.getMessage()) for record in caplog.records] == [
        ("grpcchat.direct", "direct message ann -> bob")
    ]


def test_every_line_of_ours_names_its_event() -> None:
    """`event: log` is for lines of libraries that name none; NATS warnings of ours said `log`,
    so a json log's alerting could not tell them apart."""
    levels = {"debug", "info", "warning", "error", "exception", "critical"}
    unnamed = []
    for path in Path(grpcchat.__file__).parent.rglob("*.py"):
        if "gen" in path.relative_to(Path(grpcchat.__file__).parent).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in levels
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id.endswith("log")
                and not any(keyword.arg == "extra" for keyword in node.keywords)
            ):
                unnamed.append(f"{path.name}:{node.lineno}")
    assert unnamed == []
