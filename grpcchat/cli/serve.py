"""`grpcchat serve`: options into a `ServerConfig`, then run the server until Ctrl-C."""

from __future__ import annotations

import logging
import os
import sys
from datetime import timedelta
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer

from grpcchat.cli import render
from grpcchat.cli.consoles import console, err_console
from grpcchat.cli.exits import EXIT_FAILURE, EXIT_USAGE, fail, is_write_failure
from grpcchat.cli.grpclogs import set_grpc_core_logs
from grpcchat.cli.options import SECURITY_HELP, auth_secret_option, tls_cert_option, tls_key_option
from grpcchat.cli.serverlog import LOG_FORMATS, LOG_LEVELS, configure_logging
from grpcchat.core.errors import ChatError, ConfigError
from grpcchat.core.history import MAX_AGE, MAX_MESSAGES_PER_ROOM, Retention
from grpcchat.core.limits import (
    DEFAULT_MAX_SESSIONS,
    DEFAULT_MAX_SESSIONS_PER_PEER,
    DEFAULT_QUEUE_SIZE,
    DEFAULT_RATE,
    DEFAULT_REQUEST_RATE,
    Limits,
)
from grpcchat.core.urls import redacted_url
from grpcchat.server.config import (
    DEFAULT_GRACE_PERIOD,
    DEFAULT_HOST,
    DEFAULT_PORT,
    MAX_NATS_REPLICAS,
    MAX_WORKERS,
    ServerConfig,
    host_port,
)
from grpcchat.server.connections import (
    DEFAULT_HEARTBEAT,
    DEFAULT_MAX_CONNECTION_AGE,
    DEFAULT_MAX_CONNECTION_AGE_GRACE,
)

if TYPE_CHECKING:
    from rich.text import Text

    from grpcchat.server import ChatServer
    from grpcchat.server.workers import Started, WorkerCommand

HISTORY_HELP = "History"
LIMITS_HELP = "Limits"
CONNECTIONS_HELP = "Connections"
SCALE_HELP = "Scale-out"


def serve(
    ctx: typer.Context,
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
            "(default: history.db in --data-dir); a nats:// URL is the same as --broker.",
            show_default=False,
        ),
    ] = "",
    data_dir: Annotated[
        str,
        typer.Option(
            envvar="GRPCCHAT_DATA_DIR",
            help="Where the default history database lives, and the local nats-server's files "
            "with --workers (default: your user data dir).",
            show_default=False,
        ),
    ] = "",
    keep_messages: Annotated[
        int,
        typer.Option(
            envvar="GRPCCHAT_KEEP_MESSAGES",
            min=1,
            rich_help_panel=HISTORY_HELP,
            help="Entries kept per room (messages, and each edit, deletion and reaction); "
            "older ones are deleted.",
        ),
    ] = MAX_MESSAGES_PER_ROOM,
    keep_days: Annotated[
        float,
        typer.Option(
            envvar="GRPCCHAT_KEEP_DAYS",
            min=0.001,
            max=36_500,
            rich_help_panel=HISTORY_HELP,
            help="Days a message is kept.",
        ),
    ] = MAX_AGE.days,
    auth_secret: Annotated[
        str,
        auth_secret_option(
            "Turn authentication on: clients need a token signed with this secret.", SECURITY_HELP
        ),
    ] = "",
    tls_cert: Annotated[str, tls_cert_option("TLS certificate chain (PEM).", SECURITY_HELP)] = "",
    tls_key: Annotated[str, tls_key_option("TLS private key (PEM).", SECURITY_HELP)] = "",
    tls_client_ca: Annotated[
        str,
        typer.Option(
            envvar="GRPCCHAT_TLS_CLIENT_CA",
            help="Require client certificates signed by this CA (mutual TLS).",
            show_default=False,
            rich_help_panel=SECURITY_HELP,
        ),
    ] = "",
    queue_size: Annotated[
        int,
        typer.Option(
            envvar="GRPCCHAT_QUEUE_SIZE",
            min=1,
            rich_help_panel=LIMITS_HELP,
            help="Events a session may lag behind before it is disconnected.",
        ),
    ] = DEFAULT_QUEUE_SIZE,
    rate: Annotated[
        float,
        typer.Option(
            envvar="GRPCCHAT_RATE",
            min=0,
            rich_help_panel=LIMITS_HELP,
            help="Messages per second per user (bursts of 3x); 0 for no limit.",
        ),
    ] = DEFAULT_RATE,
    request_rate: Annotated[
        float,
        typer.Option(
            envvar="GRPCCHAT_REQUEST_RATE",
            min=0,
            rich_help_panel=LIMITS_HELP,
            help="Joins and reads per second per user (bursts of 5x); 0 for no limit.",
        ),
    ] = DEFAULT_REQUEST_RATE,
    max_sessions: Annotated[
        int,
        typer.Option(
            envvar="GRPCCHAT_MAX_SESSIONS",
            min=0,
            rich_help_panel=LIMITS_HELP,
            help="Sessions (streams) in total; 0 for no limit.",
        ),
    ] = DEFAULT_MAX_SESSIONS,
    max_sessions_per_peer: Annotated[
        int,
        typer.Option(
            envvar="GRPCCHAT_MAX_SESSIONS_PER_PEER",
            min=0,
            rich_help_panel=LIMITS_HELP,
            help="Sessions per client address; 0 for no limit.",
        ),
    ] = DEFAULT_MAX_SESSIONS_PER_PEER,
    check_config: Annotated[
        bool,
        typer.Option(
            "--check-config",
            help="Print the effective configuration (flags and GRPCCHAT_* variables; secrets "
            "masked), check it as serving would, and exit without binding or opening the store.",
        ),
    ] = False,
    log_level: Annotated[
        str, typer.Option(envvar="GRPCCHAT_LOG_LEVEL", help="debug, info, warning or error.")
    ] = "info",
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Log warnings and errors only.")
    ] = False,
    log_format: Annotated[
        str,
        typer.Option(
            envvar="GRPCCHAT_LOG_FORMAT",
            help="text (Rich on a terminal, plain lines otherwise) or json (one object a line).",
        ),
    ] = "text",
    log_messages: Annotated[
        bool,
        typer.Option(
            "--log-messages",
            envvar="GRPCCHAT_LOG_MESSAGES",
            help="Put message and direct-message text in json logs (never there otherwise).",
        ),
    ] = False,
    grace: Annotated[
        float,
        typer.Option(envvar="GRPCCHAT_GRACE", min=0, help="Seconds to drain on shutdown."),
    ] = DEFAULT_GRACE_PERIOD,
    heartbeat: Annotated[
        float,
        typer.Option(
            envvar="GRPCCHAT_HEARTBEAT",
            min=0,
            rich_help_panel=CONNECTIONS_HELP,
            help="Seconds a session stream may stay quiet before the server writes an empty "
            "response (keeps proxies such as AWS ALB, 60 s idle, from closing it); 0 = off.",
        ),
    ] = DEFAULT_HEARTBEAT,
    max_connection_age: Annotated[
        float,
        typer.Option(
            envvar="GRPCCHAT_MAX_CONNECTION_AGE",
            min=0,
            rich_help_panel=CONNECTIONS_HELP,
            help="Seconds after which a connection is asked to reconnect (GOAWAY, ±10% "
            "jitter), so streams rebalance across nodes behind a load balancer; 0 = never.",
        ),
    ] = DEFAULT_MAX_CONNECTION_AGE,
    max_connection_age_grace: Annotated[
        float,
        typer.Option(
            envvar="GRPCCHAT_MAX_CONNECTION_AGE_GRACE",
            min=0,
            rich_help_panel=CONNECTIONS_HELP,
            help="Seconds a connection's streams have after that GOAWAY before it is closed "
            "(clients resume where they were).",
        ),
    ] = DEFAULT_MAX_CONNECTION_AGE_GRACE,
    metrics_port: Annotated[
        int,
        typer.Option(
            envvar="GRPCCHAT_METRICS_PORT",
            min=0,
            max=65535,
            help="Serve Prometheus metrics at http://HOST:PORT/metrics, on the --host interface "
            "(e.g. 9464); 0 turns them off. With --workers, worker i serves them on PORT+i. "
            "Labels never carry room or user names.",
        ),
    ] = 0,
    web_port: Annotated[
        int,
        typer.Option(
            envvar="GRPCCHAT_WEB_PORT",
            min=0,
            max=65535,
            help="Also serve the chat page at http://HOST:PORT/ and the chat API over Connect and "
            "gRPC-Web for browsers (e.g. 8080), on the --host interface, the same rooms as gRPC; "
            "0 turns it off. Needs grpcchat\\[web]. With --auth-secret, a non-loopback --host "
            "needs --tls-cert/--tls-key (tokens never travel in plaintext).",
        ),
    ] = 0,
    web_origin: Annotated[
        list[str] | None,
        typer.Option(
            envvar="GRPCCHAT_WEB_ORIGIN",
            help="Another origin whose pages may call the web port (CORS), e.g. "
            "http://localhost:5173; repeat it or separate with commas. Without it, only the "
            "page the server itself serves may.",
        ),
    ] = None,
    broker: Annotated[
        str,
        typer.Option(
            envvar="GRPCCHAT_BROKER",
            rich_help_panel=SCALE_HELP,
            help="Share history, live messages and presence with every server on this NATS "
            "JetStream: nats://host:4222[,host2:4222][?stream=NAME] (grpcchat\\[nats]; start one "
            "with `nats-server -js -sd ./js-data`). Default: none, this server alone.",
            show_default=False,
        ),
    ] = "",
    nats_replicas: Annotated[
        int | None,
        typer.Option(
            envvar="GRPCCHAT_NATS_REPLICAS",
            min=1,
            max=MAX_NATS_REPLICAS,
            rich_help_panel=SCALE_HELP,
            help="Copies of the history stream a NATS cluster keeps (e.g. 3 on a 3-node "
            "cluster; default: the URL's replicas=, else an existing stream's own, 1 for a new "
            "one). Needs --broker.",
            show_default=False,
        ),
    ] = None,
    workers: Annotated[
        int,
        typer.Option(
            envvar="GRPCCHAT_WORKERS",
            min=1,
            max=MAX_WORKERS,
            rich_help_panel=SCALE_HELP,
            help="Server processes sharing this one port, e.g. one per core. They share "
            "--broker; without one, a nats-server (grpcchat\\[nats]) is started for them, with "
            "its files in --data-dir/nats, and stopped on exit. A worker that dies is restarted.",
        ),
    ] = 1,
    reuse_port: Annotated[
        bool,
        # Internal: how `--workers` starts its workers on one port (SO_REUSEPORT).
        typer.Option("--reuse-port", hidden=True),
    ] = False,
) -> None:
    """Run a chat server. Ctrl-C drains gracefully; a second Ctrl-C stops at once."""
    log_shape = log_format.lower()
    if log_shape == "json":
        set_grpc_core_logs("NONE")  # its lines cannot be JSON
    level = LOG_LEVELS.get(log_level.lower())
    if level is None:
        # As for an unknown --log-format: a choice Click would have refused (exit 2).
        fail(f"unknown log level {log_level!r}; use debug, info, warning or error", EXIT_USAGE)
    if quiet:  # warnings and errors only: never more than --log-level asks for
        level = max(level, logging.WARNING)
    if log_shape not in LOG_FORMATS:
        fail(f"unknown log format {log_format!r}; use text or json", EXIT_USAGE)
    try:
        config = ServerConfig(
            host=host,
            port=port,
            store=_home_expanded(store),
            data_dir=os.path.expanduser(data_dir),
            retention=Retention(max_messages=keep_messages, max_age=_days(keep_days)),
            limits=Limits(
                queue_size=queue_size,
                rate=rate,
                burst=rate * 3,
                request_rate=request_rate,
                request_burst=request_rate * 5,
                max_sessions=max_sessions,
                max_sessions_per_peer=max_sessions_per_peer,
            ),
            auth_secret=auth_secret,
            tls_cert=tls_cert,
            tls_key=tls_key,
            tls_client_ca=tls_client_ca,
            grace_period=grace,
            heartbeat=heartbeat,
            max_connection_age=max_connection_age,
            max_connection_age_grace=max_connection_age_grace,
            log_level=level,
            metrics_port=metrics_port,
            web_port=web_port,
            web_origins=tuple(
                o.strip() for value in web_origin or () for o in value.split(",") if o.strip()
            ),
            broker=broker,
            nats_replicas=nats_replicas or 0,
            workers=workers,
            reuse_port=reuse_port,
        )
        if auth_secret:
            from grpcchat.server.auth import TokenAuthority

            TokenAuthority(auth_secret)  # validates the secret before anything starts
    except ValueError as error:
        fail(str(error))
    check_extras(config)
    if check_config:
        from grpcchat.cli.settings import check_and_print

        check_and_print(config, console, log_format=log_shape, log_messages=log_messages)
        return
    if config.workers > 1:
        run_workers(config, _worker_command(ctx), log_format=log_shape)
        return
    run_server(config, log_format=log_shape, log_messages=log_messages)


def check_extras(config: ServerConfig) -> None:
    """Exit 1 if the config needs an extra that is not installed (before --check-config
    answers, so it answers as serve would start)."""
    import importlib.util

    if config.web_port and not all(importlib.util.find_spec(m) for m in ("connectrpc", "uvicorn")):
        fail("--web-port needs grpcchat[web]: pip install 'grpcchat[web]'")
    on_nats = config.store_url.startswith("nats://")
    if on_nats and importlib.util.find_spec("nats") is None:
        fail("a nats:// history needs nats-py: pip install 'grpcchat[nats]'")
    if config.workers > 1 and importlib.util.find_spec("nats") is None:
        # Workers share a history on NATS: each worker would fail to start without it.
        fail("--workers needs grpcchat[nats]: pip install 'grpcchat[nats]'")
    if config.workers > 1 and not on_nats:
        from grpcchat.server.localnats import nats_server_binary

        try:
            nats_server_binary()
        except ConfigError as error:
            fail(str(error))


def run_server(
    config: ServerConfig, *, log_format: str = "text", log_messages: bool = False
) -> None:
    """Log to stderr, serve until stopped, and print the startup line once listening."""
    configure_logging(
        config.log_level, err_console, log_format=log_format, log_messages=log_messages
    )
    from grpcchat.server import run as serve_until_stopped
    from grpcchat.server.collector import tune_for_serving

    def started(server: ChatServer) -> None:
        extras = _extras(config)
        if server.web_port:
            extras.append(f"web {server.web_url}")
        # Scripts and tests read the real port from this line, even through a pipe.
        _print_started(render.render_started(server.address, extras))
        # This process is a server from now on (a library user's process is not ours to tune).
        tune_for_serving()

    try:
        serve_until_stopped(config, started)
    except (OSError, ChatError) as error:
        _server_failed(error, log_format)


def run_workers(config: ServerConfig, command: WorkerCommand, *, log_format: str = "text") -> None:
    """Supervise `config.workers` workers; print one startup line once they all listen."""
    configure_logging(config.log_level, err_console, log_format=log_format)
    from grpcchat.server import workers

    def started(running: Started) -> None:
        extras = [f"{config.workers} workers", *_extras(running.config)]
        _print_started(render.render_started(running.address, extras))

    try:
        workers.run(config, command, started)
    except (OSError, ChatError) as error:
        _server_failed(error, log_format)


def _home_expanded(store: str) -> str:
    """A sqlite:// URL with `~` in its path, as the shell would have made it: written where the
    shell does not expand it (GRPCCHAT_STORE in a unit file, `--store=sqlite://~/...`), it was
    a directory named `~` in the working directory, a new empty history from anywhere else.
    (`--data-dir` too: `os.path.expanduser`.)"""
    scheme, sep, path = store.partition("://")
    if scheme == "sqlite" and path.startswith("~"):
        return f"{scheme}{sep}{os.path.expanduser(path)}"
    return store


def _print_started(line: Text) -> None:
    """The startup line, on stdout at once; one that cannot be written (`> /dev/full`) stops
    the server with the words every command uses, not a bare errno."""
    try:
        console.print(line, soft_wrap=True)
        sys.stdout.flush()
    except OSError as error:
        if not is_write_failure(error):
            raise
        raise ChatError(f"cannot write the output: {error.strerror}") from None


def _server_failed(error: Exception, log_format: str) -> NoReturn:
    """Exit 1 saying why the server stopped: one line, in JSON with `--log-format json` (one
    object a line, this one too, written at exit)."""
    why = str(error)
    if log_format == "json":
        logging.getLogger("grpcchat.server").error(why, extra={"event": "server_failed"})
        raise SystemExit(EXIT_FAILURE) from None
    fail(why)


def _worker_command(ctx: typer.Context) -> WorkerCommand:
    """The options given on this command line, for `--workers` to start each worker with."""
    from grpcchat.server.workers import WorkerCommand

    args: list[str] = []
    env: dict[str, str] = {}
    for param in ctx.command.params:
        source = ctx.get_parameter_source(param.name) if param.name else None
        if source is None or source.name != "COMMANDLINE":
            continue  # the default, or a GRPCCHAT_* variable the workers inherit
        value = ctx.params[param.name]
        if isinstance(param.envvar, str):
            env[param.envvar] = str(value).lower() if isinstance(value, bool) else str(value)
        elif isinstance(value, bool):
            args += [param.opts[0]] if value else []
        else:
            args += [param.opts[0], str(value)]
    return WorkerCommand(tuple(args), env)


def _extras(config: ServerConfig) -> list[str]:
    extras = []
    if config.tls_cert:
        extras.append("mutual TLS" if config.tls_client_ca else "TLS")
    if config.auth_secret:
        extras.append("auth on")
    shared = "broker" if config.broker else "history"
    extras.append(f"{shared} {redacted_url(config.store_url)}")
    if config.metrics_port:  # served on the gRPC port's interface, as the address says
        where = host_port(config.host, config.metrics_port)
        if config.workers > 1:
            where += f"-{config.metrics_port + config.workers - 1}"
        extras.append(f"metrics {where}")
    return extras


def _days(days: float) -> timedelta:
    try:
        return timedelta(days=days)
    except OverflowError:
        raise ValueError(f"{days:g} days is longer than any history can be kept") from None
