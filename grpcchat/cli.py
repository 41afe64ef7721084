"""The `grpcchat` command: parse options, build a config, make one library call, print.

Heavy imports (grpc, the server) happen inside the commands so `grpcchat --help` and
`grpcchat send` start quickly.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import logging
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console

from grpcchat import ui
from grpcchat.config import (
    DEFAULT_ADDR,
    DEFAULT_GRACE_PERIOD,
    DEFAULT_HOST,
    DEFAULT_PORT,
    DEFAULT_QUEUE_SIZE,
    DEFAULT_TIMEOUT,
    ClientConfig,
    ServerConfig,
)
from grpcchat.errors import ChatError, RemoteError

app = typer.Typer(
    name="grpcchat",
    help="Session-based real-time chat over gRPC: run a server, join a room, script messages.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
)
console = Console()
err_console = Console(stderr=True)

# Exit codes, by what went wrong, so scripts can tell a retryable failure from a refusal.
EXIT_FAILURE = 1
EXIT_UNAVAILABLE = 3  # server unreachable or going away: retrying later can help
EXIT_REJECTED = 4  # the server refused the input: retrying the same thing will not help
EXIT_TIMEOUT = 5
EXIT_UNAUTHENTICATED = 6
EXIT_GENERATOR_FAILED = 2
_EXIT_BY_STATUS = {
    "UNAVAILABLE": EXIT_UNAVAILABLE,
    "CANCELLED": EXIT_UNAVAILABLE,
    "DEADLINE_EXCEEDED": EXIT_TIMEOUT,
    "UNAUTHENTICATED": EXIT_UNAUTHENTICATED,
    "PERMISSION_DENIED": EXIT_UNAUTHENTICATED,
}

AddrOption = Annotated[
    str,
    typer.Option(
        "--addr", "-a", envvar="GRPCCHAT_ADDR", help="Server address, host:port.", show_default=True
    ),
]
RoomOption = Annotated[
    str, typer.Option("--room", "-r", envvar="GRPCCHAT_ROOM", help="Room to use.")
]
TimeoutOption = Annotated[
    float,
    typer.Option(
        "--timeout", envvar="GRPCCHAT_TIMEOUT", min=0.1, help="Seconds to wait for the server."
    ),
]


def _fail(message: str, code: int = EXIT_FAILURE) -> NoReturn:
    err_console.print(ui.render_error(message), soft_wrap=True)
    raise typer.Exit(code)


def _run(coroutine: Coroutine[Any, Any, object]) -> None:
    """Run a command's coroutine; expected failures become one red line and an exit code."""
    try:
        asyncio.run(coroutine)
    except RemoteError as error:
        code = _EXIT_BY_STATUS.get(error.status, EXIT_REJECTED)
        _fail(str(error), code)
    except ChatError as error:
        _fail(str(error), EXIT_REJECTED)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


@app.command()
def serve(
    host: Annotated[
        str, typer.Option(envvar="GRPCCHAT_HOST", help="Interface to listen on.")
    ] = DEFAULT_HOST,
    port: Annotated[
        int,
        typer.Option(envvar="GRPCCHAT_PORT", min=0, max=65535, help="Port; 0 picks a free one."),
    ] = DEFAULT_PORT,
    log_level: Annotated[
        str, typer.Option(envvar="GRPCCHAT_LOG_LEVEL", help="debug, info, warning or error.")
    ] = "info",
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Log warnings and errors only.")
    ] = False,
    queue_size: Annotated[
        int,
        typer.Option(
            envvar="GRPCCHAT_QUEUE_SIZE",
            min=1,
            help="Messages a subscriber may lag behind before it is disconnected.",
        ),
    ] = DEFAULT_QUEUE_SIZE,
    grace: Annotated[
        float,
        typer.Option(envvar="GRPCCHAT_GRACE", min=0, help="Seconds to drain on shutdown."),
    ] = DEFAULT_GRACE_PERIOD,
) -> None:
    """Run a chat server. Ctrl-C drains gracefully; a second Ctrl-C stops at once."""
    level = logging.WARNING if quiet else logging.getLevelNamesMapping().get(log_level.upper())
    if level is None:
        _fail(f"unknown log level {log_level!r}; use debug, info, warning or error")
    config = ServerConfig(
        host=host, port=port, queue_size=queue_size, grace_period=grace, log_level=level
    )
    ui.configure_logging(config.log_level, err_console)
    from grpcchat.server import ChatServer
    from grpcchat.server import serve as run_server

    def started(server: ChatServer) -> None:
        console.print(
            f"🚀 grpcchat listening on [bold]{server.address}[/] [dim](Ctrl-C to stop)[/]",
            highlight=False,
        )
        # Scripts and tests read the real port from this line, even through a pipe.
        sys.stdout.flush()

    try:
        asyncio.run(run_server(config, started))
    except OSError as error:
        _fail(str(error))


@app.command()
def join(
    name: Annotated[
        str | None,
        typer.Option("--name", "-n", envvar="GRPCCHAT_NAME", help="Your name (asked if missing)."),
    ] = None,
    addr: AddrOption = DEFAULT_ADDR,
    room: RoomOption = "",
    timeout: TimeoutOption = DEFAULT_TIMEOUT,
) -> None:
    """Chat interactively. Type messages; [bold]exit[/], /quit or Ctrl-D leaves.

    With stdin not a terminal, each line read is sent as a message.
    """
    from grpcchat.interactive import JoinOptions, run_join

    interactive = sys.stdin.isatty()
    if name is None:
        if not interactive:
            _fail("--name is required when stdin is not a terminal")
        name = typer.prompt("Enter your name")
    options = JoinOptions(name=name, room=room, interactive=interactive)
    _run(run_join(ClientConfig(addr=addr, timeout=timeout), options, console))


@app.command()
def send(
    text: Annotated[
        str | None,
        typer.Argument(help="Message text. Omit it, or pass -, to send each line of stdin."),
    ] = None,
    name: Annotated[
        str | None,
        typer.Option(
            "--name", "-n", envvar="GRPCCHAT_NAME", help="Sender name [default: your login]."
        ),
    ] = None,
    addr: AddrOption = DEFAULT_ADDR,
    room: RoomOption = "",
    timeout: TimeoutOption = DEFAULT_TIMEOUT,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object per accepted message.")
    ] = False,
) -> None:
    """Send messages and exit once the server accepted every one.

    Exit codes: 0 sent, 3 server unreachable, 4 rejected, 5 timed out, 6 not authorised.
    """
    from grpcchat.oneshot import send_lines

    lines = [text] if text not in (None, "-") else _stdin_lines()

    def accepted(message: Any) -> None:
        if as_json:
            print(json.dumps(message_as_json(message)), flush=True)
        else:
            console.print(ui.render_sent(message))

    sender = getpass.getuser() if name is None else name
    _run(send_lines(ClientConfig(addr=addr, timeout=timeout), sender, room, lines, accepted))


def _stdin_lines() -> list[str]:
    if sys.stdin.isatty():
        err_console.print("[dim]reading messages from stdin, one per line; Ctrl-D ends[/]")
    return [line.rstrip("\n") for line in sys.stdin if line.strip()]


def message_as_json(message: Any) -> dict[str, object]:
    return {
        "id": message.id,
        "room": message.room,
        "seq": message.seq,
        "sender": message.sender,
        "text": message.text,
        "sent_at": message.sent_at.isoformat(),
    }


@app.command("gen-proto")
def gen_proto(
    check: Annotated[
        bool, typer.Option("--check", help="Only verify the committed code is up to date.")
    ] = False,
    with_buf: Annotated[
        bool, typer.Option("--with-buf", help="Generate with buf (must be on PATH).")
    ] = False,
    root: Annotated[
        Path | None, typer.Option(help="Repository root [default: found from the cwd].")
    ] = None,
) -> None:
    """Regenerate the Python code in grpcchat/gen from proto/ (run in a checkout).

    --check exits 1 and names the stale files when the committed code differs from what the
    protos produce (it always uses the default generator, grpc_tools).
    """
    from grpcchat import protogen

    try:
        repo = root or protogen.find_repo_root()
        if check:
            stale = protogen.check(repo)
            for path in stale:
                console.print(f"stale: {path.relative_to(repo)}", style="yellow", highlight=False)
            if stale:
                _fail(f"{protogen.GEN_PREFIX} is out of date; run `grpcchat gen-proto`")
            console.print(f"{protogen.GEN_PREFIX} is up to date", style="green")
            return
        changed = protogen.generate(repo, use_buf=with_buf)
    except protogen.ProtogenError as error:
        _fail(str(error), EXIT_GENERATOR_FAILED)
    for path in changed:
        verb = "wrote" if path.exists() else "removed"
        console.print(f"{verb}: {path.relative_to(repo)}", highlight=False)
    suffix = "" if changed else " (nothing changed)"
    console.print(f"{protogen.GEN_PREFIX} is up to date{suffix}", style="green")


def main() -> None:
    app()
