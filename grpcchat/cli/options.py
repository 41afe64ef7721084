"""Options that several commands share, each declared once.

The connection options (--addr, --timeout, --token, --tls...) are the parameters of
`client_config`, which builds the `ClientConfig` from them; `@connection` gives a command those
options and hands it the config. The others are `Annotated` aliases, or factories where commands
word the help differently. Environment variables are named explicitly (`GRPCCHAT_ADDR`, not
Click's automatic `GRPCCHAT_SEND_ADDR`), as the README documents them.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Annotated, Any

import typer

from grpcchat.cli.posting import build_config
from grpcchat.client.config import (
    DEFAULT_ADDR,
    DEFAULT_TIMEOUT,
    MAX_TIMEOUT,
    MIN_TIMEOUT,
    ClientConfig,
)

CONNECTION_HELP = "Connection"
SECURITY_HELP = "Security"


def name_option(help: str) -> Any:
    return typer.Option("--name", "-n", envvar="GRPCCHAT_NAME", help=help)


def room_option(help: str) -> Any:
    return typer.Option("--room", "-r", envvar="GRPCCHAT_ROOM", help=help)


def json_option(help: str) -> Any:
    return typer.Option("--json", help=help)


def auth_secret_option(help: str, panel: str | None = None) -> Any:
    return typer.Option(
        "--auth-secret",
        envvar="GRPCCHAT_AUTH_SECRET",
        help=help,
        show_default=False,
        rich_help_panel=panel,
    )


def tls_cert_option(help: str, panel: str) -> Any:
    return typer.Option(
        "--tls-cert",
        envvar="GRPCCHAT_TLS_CERT",
        help=help,
        show_default=False,
        rich_help_panel=panel,
    )


def tls_key_option(help: str, panel: str) -> Any:
    return typer.Option(
        "--tls-key", envvar="GRPCCHAT_TLS_KEY", help=help, show_default=False, rich_help_panel=panel
    )


Room = Annotated[str, room_option("Room (default: lobby).")]
Json = Annotated[bool, json_option("Print JSON instead of text, for scripts.")]

Addr = Annotated[
    str,
    typer.Option(
        "--addr",
        "-a",
        envvar="GRPCCHAT_ADDR",
        help="Server address, host:port; several, comma-separated, to fail over in turn.",
        rich_help_panel=CONNECTION_HELP,
    ),
]
Timeout = Annotated[
    float,
    typer.Option(
        envvar="GRPCCHAT_TIMEOUT",
        min=MIN_TIMEOUT,
        max=MAX_TIMEOUT,
        help="Seconds to wait for the server.",
        rich_help_panel=CONNECTION_HELP,
    ),
]
Token = Annotated[
    str,
    typer.Option(
        envvar="GRPCCHAT_TOKEN",
        help="Bearer token from `grpcchat token`.",
        show_default=False,
        rich_help_panel=CONNECTION_HELP,
    ),
]
Tls = Annotated[
    bool,
    typer.Option(
        "--tls",
        envvar="GRPCCHAT_TLS",
        help="Use TLS, trusting the system's CAs.",
        rich_help_panel=CONNECTION_HELP,
    ),
]
TlsCa = Annotated[
    str,
    typer.Option(
        envvar="GRPCCHAT_TLS_CA",
        help="Use TLS, trusting this CA file (PEM).",
        show_default=False,
        rich_help_panel=CONNECTION_HELP,
    ),
]
TlsCert = Annotated[
    str, tls_cert_option("Client certificate (PEM), for mutual TLS.", CONNECTION_HELP)
]
TlsKey = Annotated[str, tls_key_option("Client key (PEM), for mutual TLS.", CONNECTION_HELP)]


def client_config(
    *,
    addr: Addr = DEFAULT_ADDR,
    timeout: Timeout = DEFAULT_TIMEOUT,
    token: Token = "",
    tls: Tls = False,
    tls_ca: TlsCa = "",
    tls_cert: TlsCert = "",
    tls_key: TlsKey = "",
) -> ClientConfig:
    """The connection options, declared once: their values as one validated `ClientConfig`.
    (`grpcchat.cli.fast` parses the same options for a plain `grpcchat send`: keep it in step.)"""
    return build_config(
        addr=addr,
        timeout=timeout,
        token=token,
        tls=tls,
        tls_ca=tls_ca,
        tls_cert=tls_cert,
        tls_key=tls_key,
    )


_CONNECTION = inspect.signature(client_config, eval_str=True).parameters


def connection(command: Callable[..., None]) -> Callable[..., None]:
    """Give `command(client: ClientConfig, ...)` the connection options, after its own.

    Typer reads a command's options from its signature: the wrapper advertises the command's
    parameters (less `client`) followed by `client_config`'s, and calls the command with the
    config those build.
    """
    signature = inspect.signature(command, eval_str=True)
    own = [p for p in signature.parameters.values() if p.name != "client"]

    @functools.wraps(command)
    def wrapper(**options: Any) -> None:
        shared = {name: options.pop(name) for name in _CONNECTION}
        command(client=client_config(**shared), **options)

    wrapper.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[*own, *_CONNECTION.values()]
    )
    return wrapper
