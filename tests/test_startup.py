"""A plain `grpcchat send` takes the fast path (`grpcchat.cli.fast`): no Typer, pydantic or
Rich, and the same options, output and exit codes as the Typer command. Speed itself is
measured outside the tests (see the module's docstring); these check what it must not change.
"""

from __future__ import annotations

import contextlib
import io
import json
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest
from rich.console import Console

from grpcchat.cli import fast, output
from grpcchat.cli.lines import StyledLine, error_line
from grpcchat.cli.render import styled
from grpcchat.client.config import DEFAULT_ADDR, DEFAULT_TIMEOUT
from tests.conftest import ServerProcess, cli_env

HEAVY = ("typer", "click", "pydantic", "rich", "jwt", "platformdirs", "prompt_toolkit")

# The console script's `main` (fast path first) and the Typer app alone, under one program
# name so that usage messages read the same.
FAST = "import sys; sys.argv[0] = 'grpcchat'; from grpcchat.cli import main; main()"
TYPER = "import sys; sys.argv[0] = 'grpcchat'; from grpcchat.cli.app import main; main()"


def run(code: str, *args: str, stdin: str = "", **env: str) -> tuple[int, str, str]:
    done = subprocess.run(
        [sys.executable, "-c", code, *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=cli_env(**env),
        timeout=30,
    )
    return done.returncode, done.stdout, done.stderr


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    running = ServerProcess()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_a_plain_send_imports_no_terminal_or_cli_framework(server: ServerProcess) -> None:
    code = (
        "import json, sys\n"
        "sys.argv = ['grpcchat', *sys.argv[1:]]\n"
        "from grpcchat.cli import main\n"
        "try:\n"
        "    main()\n"
        "finally:\n"
        f"    heavy = sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})\n"
        "    print(json.dumps(heavy), file=sys.stderr)\n"
    )
    for extra in ((), ("--json",)):
        status, out, err = run(code, "send", "--addr", server.addr, "-n", "bot", *extra, "hi")
        assert status == 0, err
        assert out.startswith(("✓ #lobby seq", '{"id": '))
        assert json.loads(err.splitlines()[-1]) == []


def test_the_fast_path_module_alone_is_light() -> None:
    code = (
        "import sys, grpcchat.cli.fast, grpcchat.cli.posting, grpcchat.client.oneshot\n"
        f"print([m for m in sys.modules if m.split('.')[0] in {HEAVY!r}])"
    )
    status, out, err = run(code)
    assert (status, out.strip()) == (0, "[]"), err


def test_the_option_tables_match_the_typer_command() -> None:
    from typer.main import get_command

    from grpcchat.cli.app import app

    command = get_command(app).commands[fast.COMMAND]  # type: ignore[attr-defined]
    options = {p.name: p for p in command.params if p.param_type_name == "option"}
    assert [p.name for p in command.params if p.param_type_name == "argument"] == ["text"]
    assert {o for p in options.values() for o in p.opts} == {*fast.VALUE_OPTIONS, *fast.FLAGS}
    assert not [o for p in options.values() for o in p.secondary_opts]
    for name, param in options.items():
        table = fast.FLAGS if param.is_flag else fast.VALUE_OPTIONS
        assert {table[o] for o in param.opts} == {name}
        assert fast.ENVVARS.get(name) == param.envvar
        assert getattr(fast.SendCommand(), name) == param.default
    assert options["timeout"].min == 0.1
    assert (fast.SendCommand().addr, fast.SendCommand().timeout) == (DEFAULT_ADDR, DEFAULT_TIMEOUT)


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (["send", "hi"], {}, {"text": "hi"}),
        (
            ["send", "-nbot", "-r=x", "--to=", "hi"],
            {},
            {"text": "hi", "name": "bot", "room": "=x", "to": ""},  # (refused by `post`)
        ),
        (["send", "--name", "--json", "-"], {}, {"text": "-", "name": "--json"}),
        (["send", "--", "--me"], {}, {"text": "--me"}),
        (
            ["send", "--me", "--json", "--tls", "-n", "a", "-n", "b"],
            {},
            {"action": True, "as_json": True, "tls": True, "name": "b"},
        ),
        (
            ["send"],
            {"GRPCCHAT_ADDR": "h:1", "GRPCCHAT_NAME": "", "GRPCCHAT_TIMEOUT": "2.5"},
            {"addr": "h:1", "timeout": 2.5},
        ),
        (["send", "-a", "x:2"], {"GRPCCHAT_ADDR": "h:1", "GRPCCHAT_TLS": "Off"}, {"addr": "x:2"}),
        (
            ["send", "x"],
            {"GRPCCHAT_TLS": "yes", "GRPCCHAT_ROOM": "ci"},
            {"text": "x", "tls": True, "room": "ci"},
        ),
    ],
)
def test_send_command_lines_are_read_as_click_reads_them(
    args: list[str], env: dict[str, str], expected: dict[str, object]
) -> None:
    assert fast.parse_send(args, env) == fast.SendCommand()._replace(**expected)


@pytest.mark.parametrize(
    ("args", "env"),
    [
        (["join", "hi"], {}),
        (["--help"], {}),
        (["send", "--help"], {}),
        (["send", "a", "b"], {}),
        (["send", "--name"], {}),
        (["send", "-x"], {}),
        (["send", "--bogus=1"], {}),
        (["send", "--me=1"], {}),
        (["send", "--timeout", "0.05"], {}),
        (["send", "--timeout", "1e3"], {}),
        (["send"], {"GRPCCHAT_TIMEOUT": "soon"}),
        (["send"], {"GRPCCHAT_TLS": "maybe"}),
        (["send"], {"_GRPCCHAT_COMPLETE": "bash_complete"}),
    ],
)
def test_what_the_fast_path_does_not_reproduce_goes_to_typer(
    args: list[str], env: dict[str, str]
) -> None:
    assert fast.parse_send(args, env) is None


def send_cases(addr: str, closed: str) -> list[tuple[list[str], dict[str, str], int]]:
    return [
        # The same key twice: the second answer is the first message, so output matches.
        (["send", "-a", addr, "-n", "bot", "--key", "k-startup", "hi"], {}, 0),
        (
            ["send", "--name", "bot", "--key", "k-startup", "--json", "hi"],
            {"GRPCCHAT_ADDR": addr},
            0,
        ),
        (["send", "-a", addr, "-n", "bot", "--room", "Bad Room!", "hi"], {}, 4),
        (["send", "-a", addr, "-n", "bot", "--me", ""], {}, 4),
        (["send", "-a", addr, "-n", "bot", "--to", "", "hi"], {}, 2),
        (["send", "-a", closed, "--timeout", "0.5", "-n", "bot", "hi"], {}, 3),
        (
            ["send", "-a", addr, "-n", "bot", "hi"],
            {"GRPCCHAT_TLS": "1", "GRPCCHAT_TIMEOUT": "1"},
            3,
        ),
        (["send", "-a", addr, "--tls-cert", "c.pem", "hi"], {}, 1),
        (["send", "-a", addr, "hi", "there"], {}, 2),
        (["send", "-a", addr, "--timeout", "0"], {}, 2),
        (["send", "--bogus"], {}, 2),
        (["send", "-a"], {}, 2),
    ]


def test_fast_path_and_typer_command_print_the_same_and_exit_alike(
    server: ServerProcess, closed_port: int
) -> None:
    cases = send_cases(server.addr, f"127.0.0.1:{closed_port}")
    assert run(FAST, *cases[0][0])[0] == 0  # posts k-startup: from now on, a duplicate
    for args, env, code in cases:
        typer_run = run(TYPER, *args, **env)
        fast_run = run(FAST, *args, **env)
        assert fast_run == typer_run, args
        assert typer_run[0] == code, (args, typer_run)


def test_stdin_lines_take_the_fast_path_too(server: ServerProcess) -> None:
    args = ["send", "-a", server.addr, "-n", "bot", "--json"]
    status, out, err = run(FAST, *args, stdin="one\n\ntwo\n")
    assert status == 0, err
    assert [json.loads(line)["text"] for line in out.splitlines()] == ["one", "two"]


@pytest.mark.parametrize(
    "text",
    [
        "plain",
        "ctrl\rcodes\x07\x08\x0b\x0c gone",
        "[bold]no markup[/] :smile:",
        "x" * 300,
        "two\nlines",
        "  spaces  ",
        "wide 中文 🚀",
        "esc \x1b[31m",
        "nul \x00",
        "tab\tstop",
        "",
    ],
)
def test_plain_output_is_what_rich_writes_to_a_pipe(
    text: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    monkeypatch.delenv("TTY_COMPATIBLE", raising=False)
    for line in (error_line(text), StyledLine("green", (("✓ ", ""), (text, "cyan")))):
        rich_out, plain_out = io.StringIO(), io.StringIO()
        Console(file=rich_out, width=80).print(styled(line), soft_wrap=True)
        with contextlib.redirect_stdout(plain_out):
            output.emit(line)
        assert plain_out.getvalue() == rich_out.getvalue()
