"""The commands as a user runs them: subprocesses, real server, exit codes and output."""

from __future__ import annotations

import asyncio
import json
import os
import queue
import re
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from grpcchat.gen.chat.v1 import chat_service_pb2 as pb
from tests.conftest import ServerProcess, cli_env, grpcchat_command, run_cli, run_cli_async
from tests.natsfixture import free_port


def test_help_teaches_every_command() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    for command in ("serve", "join", "send", "gen-proto"):
        assert command in result.stdout


@pytest.mark.parametrize("command", [(), ("send",), ("serve",), ("join",)])
def test_dash_h_is_help_too(command: tuple[str, ...]) -> None:
    result = run_cli(*command, "-h")
    assert result.returncode == 0, result.stderr
    assert f"Usage: python -m grpcchat {' '.join(command)}".rstrip() in result.stdout
    # A flag takes no value: no value type beside it (Typer 0.29 printed `<bool>`).
    assert "<bool>" not in result.stdout


def test_send_prints_what_the_server_accepted(server_process: ServerProcess) -> None:
    result = run_cli("send", "--addr", server_process.addr, "--name", "bot", "hello")
    assert result.returncode == 0, result.stderr
    assert "#lobby seq 1" in result.stdout


def test_send_json_from_stdin_one_object_per_line(server_process: ServerProcess) -> None:
    result = run_cli(
        "send",
        "--addr",
        server_process.addr,
        "--name",
        "bot",
        "--json",
        "--room",
        "ops",
        stdin="first\n\nsecond [bold]\n",
    )
    assert result.returncode == 0, result.stderr
    objects = [json.loads(line) for line in result.stdout.splitlines()]
    assert [o["text"] for o in objects] == ["first", "second [bold]"]
    assert [o["seq"] for o in objects] == [1, 2]
    assert all(o["id"] and o["room"] == "ops" and o["sender"] == "bot" for o in objects)


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("--name", "bot", "   "), 4, "must not be empty"),
        (("--name", "bad\x1bname", "hi"), 4, "control characters"),
        (("--name", "bot", "--room", "Bad Room", "hi"), 4, "room name"),
        (("--name", "bot", "x" * 5000), 4, "limit is 4096"),
        # Bytes that are not UTF-8 in an argument (Python hands them over as lone surrogates).
        (("--name", os.fsdecode(b"b\xffot"), "hi"), 4, "name is not valid UTF-8"),
        (("--name", "bot", os.fsdecode(b"h\xffi")), 4, "message text is not valid UTF-8"),
        (("--name", "bot", "--key", os.fsdecode(b"k\xff"), "hi"), 4, "key is not valid UTF-8"),
    ],
)
def test_send_rejections_are_one_red_line(
    server_process: ServerProcess, args: tuple[str, ...], code: int, message: str
) -> None:
    result = run_cli("send", "--addr", server_process.addr, *args)
    assert result.returncode == code
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 2


@pytest.mark.parametrize(
    ("option", "text"),
    [
        ("--to", "secret for bob"),
        ("--edit", "typo fix"),
        ("--react", "👍"),
        ("--unreact", "👍"),
        ("--reply-to", "hi"),
        ("--delete", None),
    ],
)
@pytest.mark.parametrize("path", ["fast", "typer"])
def test_an_empty_target_is_refused_not_taken_for_no_option(
    server_process: ServerProcess, option: str, text: str | None, path: str
) -> None:
    """`--to "$USER"` with USER unset posted the private text to the room, exit 0; an empty
    --edit or --react posted the text as a new message."""
    typer_only = ("--timeout", "1e1") if path == "typer" else ()  # a value only Typer reads
    args = [option, "", *([text] if text is not None else [])]
    done = run_cli("send", "--addr", server_process.addr, "--name", "bot", *typer_only, *args)
    assert done.returncode == 2, done.stdout + done.stderr
    what = "a NAME" if option == "--to" else "a message ID"
    assert f"{option} needs {what}, got an empty or blank value" in done.stderr
    history = run_cli("history", "--addr", server_process.addr, "--json")
    assert history.stdout.strip() == ""  # nothing posted


def test_stdin_that_is_not_utf8_is_one_red_line_after_what_was_sent(
    server_process: ServerProcess,
) -> None:
    done = subprocess.run(
        grpcchat_command("send", "--addr", server_process.addr, "--name", "bot"),
        input=b"fine\n\xff\xfe\n",
        capture_output=True,
        env=cli_env(),
        timeout=30,
    )
    err = done.stderr.decode()
    assert done.returncode == 4, err
    assert "message text is not valid UTF-8" in err
    assert "Traceback" not in err
    assert "#lobby seq 1" in done.stdout.decode()  # the line before it was sent


def test_join_reads_piped_lines_as_send_does(server_process: ServerProcess) -> None:
    """CRLF line ends, and a line that is not UTF-8 refused alone: every line after it is
    still sent, and join ends when stdin does (it used to hang with a thread's traceback),
    with the refusal's exit code (it used to be 0)."""
    done = subprocess.run(
        grpcchat_command("join", "--addr", server_process.addr, "--name", "pipe"),
        input=b"crlf\r\nbad\xff\nafter\n",
        capture_output=True,
        env={**cli_env(), "PYTHONIOENCODING": "utf-8:strict"},  # as in a UTF-8 locale
        timeout=30,
    )
    out, err = done.stdout.decode(), done.stderr.decode()
    assert done.returncode == 4, err
    assert "message text is not valid UTF-8" in out + err
    assert "Traceback" not in out + err
    history = run_cli("history", "--addr", server_process.addr, "--json", timeout=10)
    texts = [json.loads(line)["text"] for line in history.stdout.splitlines()]
    assert texts[-2:] == ["crlf", "after"]


@pytest.mark.parametrize(
    ("lines", "code"),
    [("one\ntwo\n", 0), ("/nosuch\ntwo\n", 2), ("/join Bad!\ntwo\n", 4)],
)
def test_piped_join_exits_with_the_first_refusal(
    server_process: ServerProcess, lines: str, code: int
) -> None:
    """Every line is still tried; the exit code tells a script whether all of them went."""
    done = run_cli(
        "join", "--addr", server_process.addr, "--name", "piper", "--room", "pipes", stdin=lines
    )
    assert done.returncode == code, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    history = run_cli("history", "--addr", server_process.addr, "--room", "pipes", "--json")
    assert [json.loads(line)["text"] for line in history.stdout.splitlines()][-1] == "two"


def test_a_piped_leave_is_told_in_its_place(server_process: ServerProcess) -> None:
    """Its "left #ops" came after what the next lines printed, and at the end never."""
    who = ("--addr", server_process.addr, "--name", "leaver", "--history", "0")
    typed = "/join ops\nx\n/leave ops\n/who ops\n/leave lobby\n"
    done = run_cli("join", *who, stdin=typed)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[-3:] == ["left #ops", "#ops: nobody", "left #lobby"], done.stdout


def test_join_with_more_rooms_than_a_session_may_be_in_is_rejected_not_retry_later(
    server_process: ServerProcess,
) -> None:
    """Waiting does not lift the cap, so the exit code is 4, not 3 ("retry later")."""
    rooms = ",".join(f"r{i}" for i in range(40))
    done = run_cli("join", "--addr", server_process.addr, "--name", "greedy", "--room", rooms)
    assert done.returncode == 4, done.stdout + done.stderr
    assert "at most 32 rooms: leave one first" in done.stderr
    assert "Traceback" not in done.stdout + done.stderr


def test_a_room_may_be_typed_as_it_is_printed(server_process: ServerProcess) -> None:
    """`#ops` names room ops for every command, as join always took it; a lone `#` is refused,
    not taken for the default room."""
    addr = ("--addr", server_process.addr)
    sent = run_cli("send", *addr, "--name", "bot", "--room", "#ops", "hashed")
    assert sent.returncode == 0, sent.stderr
    assert "#ops seq 1" in sent.stdout
    history = run_cli("history", *addr, "--room", "#ops", "--json")
    assert [json.loads(line)["text"] for line in history.stdout.splitlines()] == ["hashed"]
    assert run_cli("who", *addr, "--room", "#ops", "--json").returncode == 0
    lone = run_cli("send", *addr, "--name", "bot", "--room", "#", "where?")
    assert lone.returncode == 4
    assert "room name '#' is not allowed" in lone.stderr


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
@pytest.mark.parametrize(
    "args",
    [
        ("--version",),
        ("history", "--help"),
        ("send", "--name", "bot", "hi"),
        ("rooms",),
        # Its startup line: it said "[Errno 28] No space left on device", naming nothing.
        ("serve", "--port", "0", "--store", "memory://"),
    ],
)
def test_output_that_cannot_be_written_is_one_red_line(
    server_process: ServerProcess, args: tuple[str, ...]
) -> None:
    """A full disk under stdout (`> /dev/full`), on the fast path and through Typer."""
    if args[0] in ("send", "rooms"):
        args = (*args, "--addr", server_process.addr)
    with open("/dev/full", "w") as full:
        done = subprocess.run(
            grpcchat_command(*args),
            stdout=full,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            env=cli_env(),
            timeout=30,
        )
    assert done.returncode == 1
    assert done.stderr.strip() == "error: cannot write the output: No space left on device"


def test_a_message_of_several_lines_cannot_pass_for_other_lines(
    server_process: ServerProcess,
) -> None:
    """Its lines after the first are marked as its own: not a presence line, not a message of
    someone else."""
    addr = ("--addr", server_process.addr)
    forged = "hi\n12:00:00 → bob joined #lobby\n12:00:01 bob: I am bob"
    assert run_cli("send", *addr, "--name", "eve", forged).returncode == 0
    shown = run_cli("history", *addr).stdout.splitlines()
    assert shown[0].endswith(" eve: hi")
    assert shown[1:] == ["  ┆ 12:00:00 → bob joined #lobby", "  ┆ 12:00:01 bob: I am bob"]


def test_join_off_a_terminal_without_a_name_is_a_usage_error() -> None:
    done = run_cli("join", "--addr", "127.0.0.1:9", stdin="hi\n")
    assert done.returncode == 2
    assert "--name is required when stdin is not a terminal" in done.stderr


@pytest.mark.parametrize("command", [("send",), ("send", "--key", "k"), ("join",)])
@pytest.mark.parametrize(("stdin", "why"), [("closed", "it is closed"), ("write-only", "Bad")])
def test_a_stdin_that_cannot_be_read_is_one_red_line(
    server_process: ServerProcess, command: tuple[str, ...], stdin: str, why: str
) -> None:
    args = [*grpcchat_command(*command, "--addr", server_process.addr, "--name", "bot")]
    with open(os.devnull, "wb") as write_only:
        done = subprocess.run(
            args,
            stdin=write_only if stdin == "write-only" else None,
            capture_output=True,
            env=cli_env(),
            timeout=30,
            close_fds=True,
            # Closed: the child starts with no file descriptor 0 at all.
            preexec_fn=(lambda: os.close(0)) if stdin == "closed" else None,
        )
    err = done.stderr.decode()
    assert done.returncode == 1, err
    assert f"error: cannot read stdin: {why}" in err
    assert "Traceback" not in err


def test_piped_lines_are_sent_as_they_come_not_at_the_end(
    server_process: ServerProcess,
) -> None:
    """A program that keeps running and writes a line now and then: each line is sent (and
    reported) while stdin is still open."""
    process = subprocess.Popen(
        grpcchat_command("send", "--addr", server_process.addr, "--name", "bot"),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(),
    )
    assert process.stdin is not None
    stdout = process.stdout
    assert stdout is not None
    out: queue.Queue[str] = queue.Queue()

    def read_out() -> None:
        for line in stdout:
            out.put(line)

    threading.Thread(target=read_out, daemon=True).start()
    try:
        process.stdin.write("first\n")
        process.stdin.flush()
        assert "#lobby seq 1" in out.get(timeout=20)  # stdin is still open
        process.stdin.write("second\n")
        process.stdin.close()
        assert "#lobby seq 2" in out.get(timeout=20)
        assert process.wait(timeout=20) == 0
    finally:
        process.kill()
        process.wait()


def test_no_line_after_a_bad_one_is_sent(server_process: ServerProcess) -> None:
    lines = ["fine", "x" * 5000, "after"]
    result = run_cli(
        "send", "--addr", server_process.addr, "--name", "bot", stdin="\n".join(lines) + "\n"
    )
    assert result.returncode == 4
    assert "limit is 4096" in result.stderr
    assert "#lobby seq 1" in result.stdout
    history = run_cli("history", "--addr", server_process.addr, "--json")
    assert [json.loads(line)["text"] for line in history.stdout.splitlines()] == ["fine"]


@pytest.mark.parametrize("token", ["é", os.fsdecode(b"t\xff"), "two words"])
def test_a_token_that_cannot_be_a_header_is_one_red_line(
    server_process: ServerProcess, token: str
) -> None:
    for command in (("who",), ("send", "--name", "bot", "hi")):
        result = run_cli(*command, "--addr", server_process.addr, "--token", token)
        assert result.returncode == 1
        assert "--token is not a token" in result.stderr
        assert "Traceback" not in result.stderr


def test_send_to_nothing_is_exit_3() -> None:
    # send retries an unreachable server until --timeout, then gives up with exit 3.
    result = run_cli("send", "--addr", "127.0.0.1:1", "--timeout", "1.5", "--name", "bot", "hi")
    assert result.returncode == 3
    assert "cannot reach a chat server at 127.0.0.1:1" in result.stderr
    assert "Traceback" not in result.stderr
    assert "may have been posted" not in result.stderr  # it never reached a server


def test_send_timeout_is_exit_5_and_names_the_key_that_posts_it_at_most_once() -> None:
    """A server that accepts the call and never answers: only the deadline can end it. It may
    have posted the message, so a retry without the key could post it twice: the error names
    the key every attempt carried."""
    keys: list[str] = []

    def hang(request: bytes, context: grpc.ServicerContext) -> bytes:
        keys.append(pb.SendRequest.FromString(request).key)
        time.sleep(5)
        return b""

    server = grpc.server(ThreadPoolExecutor(max_workers=2))
    handler = grpc.unary_unary_rpc_method_handler(hang)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("chat.v1.ChatService", {"Send": handler}),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        result = run_cli(
            "send", "--addr", f"127.0.0.1:{port}", "--timeout", "1", "--name", "b", "hi"
        )
    finally:
        server.stop(0)
    assert result.returncode == 5
    assert "no answer from" in result.stderr
    assert "Traceback" not in result.stderr
    assert len(set(keys)) == 1, keys
    assert result.stderr.strip().endswith(
        f"it may have been posted: the same send with key {keys[0]} posts it at most once"
    )


def test_serve_rejects_a_busy_port(server_process: ServerProcess) -> None:
    result = run_cli("serve", "--port", str(server_process.port))
    assert result.returncode == 1
    assert "cannot listen" in result.stderr


def test_serve_with_json_logs_says_a_busy_port_in_json_only(server_process: ServerProcess) -> None:
    """gRPC core's own line about the failed bind (not JSON) is left out; the error is a
    JSON record like every other line."""
    result = run_cli("serve", "--port", str(server_process.port), "--log-format", "json")
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    record = json.loads(line)
    assert (record["level"], record["event"]) == ("error", "server_failed")
    assert "cannot listen" in record["message"]


def test_serve_bad_options() -> None:
    assert run_cli("serve", "--port", "70000").returncode == 2
    for option in ("--log-level", "--log-format"):
        bad = run_cli("serve", "--port", "0", option, "loud")
        assert bad.returncode == 2, option
        assert f"unknown {option.removeprefix('--').replace('-', ' ')} 'loud'" in bad.stderr
    # --quiet never makes a bad level good, nor a quieter one louder.
    assert run_cli("serve", "--check-config", "-q", "--log-level", "loud").returncode == 2
    shown = run_cli("serve", "--check-config", "-q", "--log-level", "error", "--store", "memory://")
    assert re.search(r"^log_level = error$", shown.stdout, re.M), shown.stdout


@pytest.mark.parametrize(
    ("args", "wording"),
    [
        # gRPC's deadlines overflow past these: the call never ended, or failed at once.
        (["send", "--name", "bot", "--timeout", "inf", "hi"], "less than or equal to 31536000"),
        (["send", "--name", "bot", "--timeout", "99999999999", "hi"], "less than or equal"),
        (["history", "--timeout", "1e300"], "less than or equal to 31536000"),
        # Past the seqs any store keeps (and the protobuf field's range).
        (["history", "--before", str(2**64)], "less than or equal to 9223372036854775807"),
    ],
)
def test_out_of_range_numbers_are_usage_errors(args: list[str], wording: str) -> None:
    done = run_cli(*args, "--addr", "127.0.0.1:9", timeout=10)
    assert done.returncode == 2, done.stderr
    assert wording in " ".join(done.stderr.split()).replace("│", "").replace("  ", " ")
    assert "Traceback" not in done.stderr


def test_serve_logs_messages_and_drains_on_sigterm() -> None:
    server = ServerProcess()
    try:
        assert run_cli("send", "--addr", server.addr, "--name", "alice", "hi there").returncode == 0
        server.process.send_signal(signal.SIGTERM)
        _, err = server.process.communicate(timeout=15)
    finally:
        server.stop()
    assert server.process.returncode == 0
    assert '🟢 [alice]: "hi there"' in err
    assert "server stopped" in err


def test_quiet_server_does_not_log_messages() -> None:
    server = ServerProcess("--quiet")
    try:
        assert run_cli("send", "--addr", server.addr, "--name", "alice", "secret").returncode == 0
        server.process.send_signal(signal.SIGINT)
        _, err = server.process.communicate(timeout=15)
    finally:
        server.stop()
    assert server.process.returncode == 0
    assert "secret" not in err


def test_send_without_a_name_or_a_login_name_says_to_give_one(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import getpass

    from grpcchat.cli import posting
    from grpcchat.cli.exits import EXIT_USAGE

    def nobody() -> str:
        raise KeyError("getpwuid(): uid not found: 12345")  # a container's uid, no USER

    monkeypatch.setattr(getpass, "getuser", nobody)
    with pytest.raises(SystemExit) as exited:
        posting._login()
    assert exited.value.code == EXIT_USAGE
    assert "give --name" in capsys.readouterr().err


def test_exit_codes_tell_a_retryable_failure_from_a_refusal() -> None:
    from grpcchat.cli.exits import EXIT_REJECTED, EXIT_TIMEOUT, EXIT_UNAVAILABLE, exit_code

    assert exit_code("UNAVAILABLE") == EXIT_UNAVAILABLE
    assert exit_code("RESOURCE_EXHAUSTED") == EXIT_UNAVAILABLE  # over the rate: later, it goes
    assert exit_code("DEADLINE_EXCEEDED") == EXIT_TIMEOUT
    assert exit_code("INVALID_ARGUMENT") == EXIT_REJECTED
    assert exit_code("NOT_FOUND") == EXIT_REJECTED


@pytest.mark.parametrize("command", ["send", "join"])
async def test_piped_lines_to_a_server_that_never_answers_time_out(
    wedged_addr: str, command: str
) -> None:
    """The session's stream waited for the server's headers, and join and a piped send for the
    session, without a bound: they hung for good. --timeout bounds them, and a next address
    is tried within it."""
    started = time.monotonic()
    code, _, err = await run_cli_async(
        command, "--addr", wedged_addr, "--name", "bob", "--timeout", "1", stdin="a\nb\n"
    )
    assert (code, time.monotonic() - started < 10) == (5, True), err
    assert f"no answer from {wedged_addr} within 1s" in err


async def test_piped_lines_fail_over_from_a_server_that_never_answers(
    wedged_addr: str, server_process: ServerProcess
) -> None:
    addrs = f"{wedged_addr},{server_process.addr}"
    code, out, err = await run_cli_async(
        "send", "--addr", addrs, "--name", "bob", "--timeout", "4", stdin="a\nb\n"
    )
    assert code == 0, err
    assert out.count("✓ #lobby") == 2


async def test_piped_lines_wait_for_a_server_that_comes_up_within_the_timeout(
    tmp_path: Path,
) -> None:
    """As a one-line send does: a piped one gave up at once (exit 3) on a server not up yet."""
    port = free_port()
    args = ("--addr", f"127.0.0.1:{port}", "--name", "bot", "--timeout", "15")
    sending = asyncio.create_task(run_cli_async("send", *args, stdin="two\nthree\n"))
    await asyncio.sleep(1.0)
    assert not sending.done()  # still trying
    server = await asyncio.to_thread(ServerProcess, "--data-dir", str(tmp_path), port=port)
    try:
        code, out, err = await asyncio.wait_for(sending, 30)
    finally:
        await asyncio.to_thread(server.stop)
    assert code == 0, err
    assert out.count("✓ #lobby") == 2


def test_a_key_for_several_lines_is_a_usage_error(server_process: ServerProcess) -> None:
    done = run_cli(
        "send", "--addr", server_process.addr, "--name", "bot", "--key", "k", stdin="a\nb\n"
    )
    assert done.returncode == 2
    assert "--key applies to a single message; stdin has several" in done.stderr


@pytest.mark.parametrize(
    ("command", "says"),
    [("history", "no messages in #lobby"), ("health", "SERVING"), ("who", "#lobby: nobody")],
)
async def test_a_one_shot_read_fails_over_from_a_server_that_never_answers(
    wedged_addr: str, server_process: ServerProcess, command: str, says: str
) -> None:
    """Connected and silent, the first address kept the call until --timeout ran out: the
    next was tried only when the first could not be connected to at all."""
    addrs = f"{wedged_addr},{server_process.addr}"
    code, out, err = await run_cli_async(command, "--addr", addrs, "--timeout", "4")
    assert code == 0, err
    assert says in out + err
