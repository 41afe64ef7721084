"""The `grpcchat` command: parse options, build a config, make one library call, print.

Heavy imports (grpc, the server) happen inside the commands so `grpcchat --help` starts quickly.
"""

from __future__ import annotations

import asyncio
import functools
import getpass
import inspect
import json
import logging
import os
import re
import sys
from collections.abc import Callable, Coroutine
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console

from grpcchat.cli import render
from grpcchat.client.config import DEFAULT_ADDR, DEFAULT_TIMEOUT, ClientConfig
from grpcchat.core.errors import ChatError, ConfigError, RemoteError
from grpcchat.core.history import MAX_AGE, MAX_MESSAGES_PER_ROOM, Retention
from grpcchat.core.limits import DEFAULT_QUEUE_SIZE, DEFAULT_RATE, Limits
from grpcchat.core.models import DEFAULT_ROOM
from grpcchat.server.config import DEFAULT_GRACE_PERIOD, DEFAULT_HOST, DEFAULT_PORT, ServerConfig

if TYPE_CHECKING:
    from grpcchat.client import Sent
    from grpcchat.core.models import Message

app = typer.Typer(
    name="grpcchat",
    help="Session-based real-time chat over gRPC: run a server, join rooms, script messages.",
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
_EXIT_BY_STATUS = {
    "UNAVAILABLE": EXIT_UNAVAILABLE,
    "CANCELLED": EXIT_UNAVAILABLE,
    "DEADLINE_EXCEEDED": EXIT_TIMEOUT,
    "UNAUTHENTICATED": EXIT_UNAUTHENTICATED,
    "PERMISSION_DENIED": EXIT_UNAUTHENTICATED,
}
CONNECTION_HELP = "Connection"

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
RoomOption = Annotated[
    str, typer.Option("--room", "-r", envvar="GRPCCHAT_ROOM", help="Room (default: lobby).")
]


def _fail(message: str, code: int = EXIT_FAILURE) -> NoReturn:
    err_console.print(render.render_error(message), soft_wrap=True)
    raise typer.Exit(code)


def _run(coroutine: Coroutine[Any, Any, object]) -> None:
    """Run a command's coroutine; expected failures become one red line and an exit code."""
    try:
        asyncio.run(coroutine)
    except RemoteError as error:
        _fail(str(error), _EXIT_BY_STATUS.get(error.status, EXIT_REJECTED))
    except ConfigError as error:
        _fail(str(error), EXIT_FAILURE)
    except ChatError as error:
        _fail(str(error), EXIT_REJECTED)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


# -- connection options, shared by every client command ---------------------------------------

_CONNECTION_OPTIONS: dict[str, tuple[Any, Any]] = {
    "addr": (
        Annotated[
            str,
            typer.Option(
                "--addr",
                "-a",
                envvar="GRPCCHAT_ADDR",
                help="Server address, host:port.",
                rich_help_panel=CONNECTION_HELP,
            ),
        ],
        DEFAULT_ADDR,
    ),
    "timeout": (
        Annotated[
            float,
            typer.Option(
                envvar="GRPCCHAT_TIMEOUT",
                min=0.1,
                help="Seconds to wait for the server.",
                rich_help_panel=CONNECTION_HELP,
            ),
        ],
        DEFAULT_TIMEOUT,
    ),
    "token": (
        Annotated[
            str,
            typer.Option(
                envvar="GRPCCHAT_TOKEN",
                help="Bearer token from `grpcchat token`.",
                show_default=False,
                rich_help_panel=CONNECTION_HELP,
            ),
        ],
        "",
    ),
    "tls": (
        Annotated[
            bool,
            typer.Option(
                "--tls",
                envvar="GRPCCHAT_TLS",
                help="Use TLS, trusting the system's CAs.",
                rich_help_panel=CONNECTION_HELP,
            ),
        ],
        False,
    ),
    "tls_ca": (
        Annotated[
            str,
            typer.Option(
                envvar="GRPCCHAT_TLS_CA",
                help="Use TLS, trusting this CA file (PEM).",
                show_default=False,
                rich_help_panel=CONNECTION_HELP,
            ),
        ],
        "",
    ),
    "tls_cert": (
        Annotated[
            str,
            typer.Option(
                envvar="GRPCCHAT_TLS_CERT",
                help="Client certificate (PEM), for mutual TLS.",
                show_default=False,
                rich_help_panel=CONNECTION_HELP,
            ),
        ],
        "",
    ),
    "tls_key": (
        Annotated[
            str,
            typer.Option(
                envvar="GRPCCHAT_TLS_KEY",
                help="Client key (PEM), for mutual TLS.",
                show_default=False,
                rich_help_panel=CONNECTION_HELP,
            ),
        ],
        "",
    ),
}


def client_command(func: Callable[..., None]) -> Callable[..., None]:
    """Give a command the connection options; it receives them as one `client: ClientConfig`.

    Typer reads a command's options from its signature, so the wrapper advertises the
    command's own parameters plus the shared ones, and folds the latter into a config.
    """
    own = [
        p for p in inspect.signature(func, eval_str=True).parameters.values() if p.name != "client"
    ]
    shared = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=kind, default=default)
        for name, (kind, default) in _CONNECTION_OPTIONS.items()
    ]

    @functools.wraps(func)
    def wrapper(**kwargs: Any) -> None:
        options = {name: kwargs.pop(name) for name in _CONNECTION_OPTIONS}
        try:
            config = ClientConfig(**options)
        except ValueError as error:
            _fail(str(error))
        func(client=config, **kwargs)

    wrapper.__signature__ = inspect.Signature(own + shared)  # type: ignore[attr-defined]
    return wrapper


def _token_name(token: str) -> str | None:
    """The user name inside a token, read without verifying it (the server verifies)."""
    import jwt

    try:
        name = jwt.decode(token, options={"verify_signature": False}).get("sub")
    except jwt.InvalidTokenError:
        return None
    return name if isinstance(name, str) else None


# -- serve ------------------------------------------------------------------------------------


@app.command()
def serve(
    host: Annotated[
        str, typer.Option(envvar="GRPCCHAT_HOST", help="Interface to listen on.")
    ] = DEFAULT_HOST,
    port: Annotated[
        int,
        typer.Option(envvar="GRPCCHAT_PORT", min=0, max=65535, help="Port; 0 picks a free one."),
    ] = DEFAULT_PORT,
    store: Annotated[
        str,
        typer.Option(
            envvar="GRPCCHAT_STORE",
            help="History: sqlite:///path/history.db, or memory:// to keep nothing "
            "(default: history.db in --data-dir).",
            show_default=False,
        ),
    ] = "",
    data_dir: Annotated[
        str,
        typer.Option(
            envvar="GRPCCHAT_DATA_DIR",
            help="Where the default history database lives (default: your user data dir).",
            show_default=False,
        ),
    ] = "",
    keep_messages: Annotated[
        int,
        typer.Option(
            envvar="GRPCCHAT_KEEP_MESSAGES",
            min=1,
            rich_help_panel="History",
            help="Messages kept per room; older ones are deleted.",
        ),
    ] = MAX_MESSAGES_PER_ROOM,
    keep_days: Annotated[
        float,
        typer.Option(
            envvar="GRPCCHAT_KEEP_DAYS",
            min=0.001,
            max=36_500,
            rich_help_panel="History",
            help="Days a message is kept.",
        ),
    ] = MAX_AGE.days,
    auth_secret: Annotated[
        str,
        typer.Option(
            envvar="GRPCCHAT_AUTH_SECRET",
            help="Turn authentication on: clients need a token signed with this secret.",
            show_default=False,
            rich_help_panel="Security",
        ),
    ] = "",
    tls_cert: Annotated[
        str,
        typer.Option(
            envvar="GRPCCHAT_TLS_CERT",
            help="TLS certificate chain (PEM).",
            show_default=False,
            rich_help_panel="Security",
        ),
    ] = "",
    tls_key: Annotated[
        str,
        typer.Option(
            envvar="GRPCCHAT_TLS_KEY",
            help="TLS private key (PEM).",
            show_default=False,
            rich_help_panel="Security",
        ),
    ] = "",
    tls_client_ca: Annotated[
        str,
        typer.Option(
            envvar="GRPCCHAT_TLS_CLIENT_CA",
            help="Require client certificates signed by this CA (mutual TLS).",
            show_default=False,
            rich_help_panel="Security",
        ),
    ] = "",
    queue_size: Annotated[
        int,
        typer.Option(
            envvar="GRPCCHAT_QUEUE_SIZE",
            min=1,
            rich_help_panel="Limits",
            help="Events a session may lag behind before it is disconnected.",
        ),
    ] = DEFAULT_QUEUE_SIZE,
    rate: Annotated[
        float,
        typer.Option(
            envvar="GRPCCHAT_RATE",
            min=0,
            rich_help_panel="Limits",
            help="Messages per second per user (bursts of 3x); 0 for no limit.",
        ),
    ] = DEFAULT_RATE,
    log_level: Annotated[
        str, typer.Option(envvar="GRPCCHAT_LOG_LEVEL", help="debug, info, warning or error.")
    ] = "info",
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Log warnings and errors only.")
    ] = False,
    grace: Annotated[
        float,
        typer.Option(envvar="GRPCCHAT_GRACE", min=0, help="Seconds to drain on shutdown."),
    ] = DEFAULT_GRACE_PERIOD,
) -> None:
    """Run a chat server. Ctrl-C drains gracefully; a second Ctrl-C stops at once."""
    level = logging.WARNING if quiet else logging.getLevelNamesMapping().get(log_level.upper())
    if level is None:
        _fail(f"unknown log level {log_level!r}; use debug, info, warning or error")
    try:
        config = ServerConfig(
            host=host,
            port=port,
            store=store,
            data_dir=data_dir,
            retention=Retention(max_messages=keep_messages, max_age=_days(keep_days)),
            limits=Limits(queue_size=queue_size, rate=rate, burst=rate * 3),
            auth_secret=auth_secret,
            tls_cert=tls_cert,
            tls_key=tls_key,
            tls_client_ca=tls_client_ca,
            grace_period=grace,
            log_level=level,
        )
        if auth_secret:
            from grpcchat.server.auth import TokenAuthority

            TokenAuthority(auth_secret)  # validates the secret before anything starts
    except ValueError as error:
        _fail(str(error))
    render.configure_logging(config.log_level, err_console)
    from grpcchat.server import ChatServer
    from grpcchat.server import serve as run_server

    def started(server: ChatServer) -> None:
        extras = []
        if config.tls_cert:
            extras.append("mutual TLS" if config.tls_client_ca else "TLS")
        if config.auth_secret:
            extras.append("auth on")
        extras.append(f"history {config.store_url}")
        console.print(render.render_started(server.address, extras), soft_wrap=True)
        # Scripts and tests read the real port from this line, even through a pipe.
        sys.stdout.flush()

    try:
        asyncio.run(run_server(config, started))
    except (OSError, ChatError) as error:
        _fail(str(error))


def _days(days: float) -> timedelta:
    try:
        return timedelta(days=days)
    except OverflowError:
        raise ValueError(f"{days:g} days is longer than any history can be kept") from None


# -- join / send ------------------------------------------------------------------------------


def _rooms(values: list[str] | None) -> tuple[str, ...]:
    rooms = [r.strip().lstrip("#") for v in values or [] for r in v.split(",") if r.strip()]
    return tuple(dict.fromkeys(rooms)) or (DEFAULT_ROOM,)


@app.command()
@client_command
def join(
    client: ClientConfig,
    name: Annotated[
        str | None,
        typer.Option(
            "--name",
            "-n",
            envvar="GRPCCHAT_NAME",
            help="Your name (asked if missing; with --token, the token's).",
        ),
    ] = None,
    room: Annotated[
        list[str] | None,
        typer.Option(
            "--room",
            "-r",
            envvar="GRPCCHAT_ROOM",
            help="Room(s) to enter: repeat, or a comma list (default: lobby).",
        ),
    ] = None,
    history: Annotated[
        int, typer.Option(min=0, max=1000, help="Recent messages to show per room on entry.")
    ] = 20,
) -> None:
    """Chat interactively. Type messages; /help lists commands; exit or Ctrl-D leaves.

    In the session: /join ROOM, /leave, /rooms, /who, /msg NAME TEXT, /me ACTION, /history N.
    If the server goes away the session reconnects and resumes where it was, nothing missed.
    With stdin not a terminal, each line read is sent as a message.

    Example: grpcchat join --name alice --room lobby,games
    """
    from grpcchat.cli.interactive import JoinOptions, run_join

    interactive = sys.stdin.isatty()
    if name is None and client.token:
        name = _token_name(client.token)
    if name is None:
        if not interactive:
            _fail("--name is required when stdin is not a terminal")
        name = typer.prompt("Enter your name")
    options = JoinOptions(name, _rooms(room), history, interactive)
    _run(run_join(client, options, console))


@app.command()
@client_command
def send(
    client: ClientConfig,
    text: Annotated[
        str | None,
        typer.Argument(help="Message text. Omit it, or pass -, to send each line of stdin."),
    ] = None,
    name: Annotated[
        str | None,
        typer.Option(
            "--name",
            "-n",
            envvar="GRPCCHAT_NAME",
            help="Sender name (default: your login; with --token, the token's).",
        ),
    ] = None,
    room: RoomOption = "",
    to: Annotated[
        str, typer.Option("--to", help="Send a direct message to this user instead.")
    ] = "",
    action: Annotated[bool, typer.Option("--me", help="Send as an action (* name text).")] = False,
    key: Annotated[
        str,
        typer.Option(
            help="Idempotency key: repeating a send with the same key posts it once. "
            "Default: a fresh key per message (retries inside one run never double).",
            show_default=False,
        ),
    ] = "",
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object per accepted message.")
    ] = False,
) -> None:
    """Send messages and exit once the server accepted every one.

    Transient failures are retried with the same key until --timeout.
    Exit codes: 0 sent, 1 local setup problem, 3 server unreachable, 4 rejected, 5 timed out,
    6 not authenticated.

    Examples: grpcchat send --name bot "deploy done"; make 2>&1 | grpcchat send --room ci --json
    """
    from grpcchat.client.oneshot import send_lines

    lines = [text] if text not in (None, "-") else _stdin_lines()
    if key and len(lines) > 1:
        _fail("--key applies to a single message; stdin has several")
    sender = name if name is not None else _token_name(client.token) or getpass.getuser()

    def accepted(sent: Sent) -> None:
        if as_json:
            print(json.dumps(message_as_json(sent.message, sent.duplicate)), flush=True)
        else:
            console.print(render.render_sent(sent.message, sent.duplicate), soft_wrap=True)

    _run(send_lines(client, sender, lines, accepted, room=room, to=to, action=action, key=key))


def _stdin_lines() -> list[str]:
    if sys.stdin.isatty():
        err_console.print("[dim]reading messages from stdin, one per line; Ctrl-D ends[/]")
    return [line.rstrip("\n") for line in sys.stdin if line.strip()]


def message_as_json(message: Message, duplicate: bool = False) -> dict[str, object]:
    data: dict[str, object] = {
        "id": message.id,
        "room": message.room,
        "seq": message.seq,
        "epoch": message.epoch,
        "sender": message.sender,
        "text": message.text,
        "sent_at": message.sent_at.isoformat(),
    }
    if message.recipient:
        data["to"] = message.recipient
    if message.action:
        data["action"] = True
    if duplicate:
        data["duplicate"] = True
    return data


# -- history / rooms / who --------------------------------------------------------------------


@app.command()
@client_command
def history(
    client: ClientConfig,
    room: RoomOption = "",
    limit: Annotated[int, typer.Option(min=1, max=1000, help="How many messages.")] = 20,
    before: Annotated[
        int, typer.Option(min=0, help="Only messages before this seq (page backwards).")
    ] = 0,
    as_json: JsonOption = False,
) -> None:
    """Show the latest messages of a room (oldest first), as `join` does."""
    from grpcchat.client import ChatClient

    async def fetch() -> list[Message]:
        async with ChatClient(client) as chat:
            latest = await chat.history(room, limit=limit, before=before, newest_first=True)
        return latest[::-1]

    messages = _call(fetch())
    for message in messages:
        if as_json:
            print(json.dumps(message_as_json(message)))
        else:
            console.print(render.render_message(message), soft_wrap=True)
    if not messages and not as_json:
        err_console.print(f"[dim]no messages in #{room or 'lobby'}[/]")


@app.command()
@client_command
def rooms(client: ClientConfig, as_json: JsonOption = False) -> None:
    """List the rooms that have members or history."""
    from dataclasses import asdict

    from grpcchat.client import ChatClient

    async def fetch() -> Any:
        async with ChatClient(client) as chat:
            return await chat.rooms()

    found = _call(fetch())
    if as_json:
        print(json.dumps([asdict(r) for r in found]))
    else:
        console.print(render.render_rooms(found))


@app.command()
@client_command
def who(client: ClientConfig, room: RoomOption = "", as_json: JsonOption = False) -> None:
    """List who is in a room now."""
    from grpcchat.client import ChatClient

    async def fetch() -> list[str]:
        async with ChatClient(client) as chat:
            return await chat.members(room)

    members = _call(fetch())
    if as_json:
        print(json.dumps({"room": room or DEFAULT_ROOM, "members": members}))
    else:
        console.print(render.render_members(room or DEFAULT_ROOM, members))


def _call(coroutine: Coroutine[Any, Any, Any]) -> Any:
    result: list[Any] = []

    async def keep() -> None:
        result.append(await coroutine)

    _run(keep())
    return result[0]


# -- token ------------------------------------------------------------------------------------

_DURATION = re.compile(r"(\d+)([smhd])")
_UNIT = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_duration(text: str) -> timedelta:
    """`90s`, `30m`, `24h`, `7d`, or combinations like `1h30m`."""
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text.strip():
        raise typer.BadParameter(f"{text!r} is not a duration like 30m, 24h or 7d")
    try:
        return sum((timedelta(**{_UNIT[u]: int(n)}) for n, u in parts), timedelta())
    except OverflowError:
        raise typer.BadParameter(f"{text!r} is longer than any token can live") from None


@app.command()
def token(
    name: Annotated[str, typer.Argument(help="The user the token speaks for.")],
    ttl: Annotated[str, typer.Option(help="Lifetime: 30m, 24h, 7d, 1h30m...")] = "24h",
    secret: Annotated[
        str,
        typer.Option(
            "--auth-secret",
            envvar="GRPCCHAT_AUTH_SECRET",
            help="The server's secret.",
            show_default=False,
        ),
    ] = "",
) -> None:
    """Mint a signed token for NAME (use the secret the server runs with)."""
    from grpcchat.server.auth import TokenAuthority

    if not secret:
        _fail("no secret: pass --auth-secret or set GRPCCHAT_AUTH_SECRET")
    lifetime = parse_duration(ttl)
    try:
        print(TokenAuthority(secret).mint(name, lifetime))
    except (ValueError, ChatError) as error:
        _fail(str(error))


# -- bench ------------------------------------------------------------------------------------


@app.command()
def bench(
    addr: Annotated[
        str | None,
        typer.Option(
            "--addr",
            "-a",
            help="Server to load (default: start one in its own process, history in memory).",
        ),
    ] = None,
    subscribers: Annotated[int, typer.Option("--subscribers", "-s", min=1)] = 50,
    publishers: Annotated[int, typer.Option("--publishers", "-p", min=1)] = 1,
    rate: Annotated[
        float, typer.Option(min=0, help="Messages/s per publisher; 0 = as fast as possible.")
    ] = 200.0,
    duration: Annotated[float, typer.Option("--duration", "-d", min=0.1, help="Seconds.")] = 10.0,
    size: Annotated[int, typer.Option(min=1, help="Message length in characters.")] = 64,
    processes: Annotated[
        int | None, typer.Option(min=1, help="Subscriber processes (default: one per CPU).")
    ] = None,
    room: Annotated[str, typer.Option(help="Room to use (its messages are real).")] = "bench",
    as_json: JsonOption = False,
) -> None:
    """Measure fan-out: deliveries per second and end-to-end latency percentiles.

    Subscribers run in separate processes so the load generator is not what is measured.
    Exits 1 if any message was lost or duplicated.
    """
    from dataclasses import asdict

    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from grpcchat.bench import PHASES, BenchConfig, BenchResult, run_bench
    from grpcchat.cli.bench_report import render_result

    try:
        config = BenchConfig(
            addr=addr,
            subscribers=subscribers,
            publishers=publishers,
            rate=rate,
            duration=duration,
            room=room,
            processes=processes,
            message_size=size,
        )
    except ValueError as error:
        _fail(str(error))
    columns = (TextColumn("{task.description:<8}"), BarColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err_console, transient=True, disable=as_json) as progress:
        tasks = {phase: progress.add_task(phase, total=1.0, visible=False) for phase in PHASES}

        def on_progress(phase: str, done: float) -> None:
            progress.update(tasks[phase], completed=done, visible=True)

        result: BenchResult = _call(run_bench(config, on_progress))
    if as_json:
        print(json.dumps(asdict(result), default=str))
    else:
        console.print(render_result(result))
    if not result.ok:
        raise typer.Exit(EXIT_FAILURE)


# -- gen-proto --------------------------------------------------------------------------------


@app.command("gen-proto")
def gen_proto(
    check: Annotated[
        bool, typer.Option("--check", help="Only verify the committed code is up to date.")
    ] = False,
    with_buf: Annotated[
        bool, typer.Option("--with-buf", help="Generate with buf (must be on PATH).")
    ] = False,
    root: Annotated[
        Path | None, typer.Option(help="Repository root (default: found from the cwd).")
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
        _fail(str(error))
    for path in changed:
        verb = "wrote" if path.exists() else "removed"
        console.print(f"{verb}: {path.relative_to(repo)}", highlight=False)
    suffix = "" if changed else " (nothing changed)"
    console.print(f"{protogen.GEN_PREFIX} is up to date{suffix}", style="green")


def main() -> None:
    # gRPC core logs connection details (TLS handshakes, GOAWAYs) to stderr at INFO; a
    # command's stderr is for its own one-line errors. The commands import grpc lazily, so
    # this is in time.
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    app()
