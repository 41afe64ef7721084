"""The `grpcchat` command: the Typer app and its commands, one module per command group.

Each command parses options into a config and makes one library call; heavy imports (grpc, the
server, the client) happen inside the commands, so `grpcchat --help` starts quickly.
"""

from __future__ import annotations

from typing import Annotated

import typer

from grpcchat.cli.bench import bench
from grpcchat.cli.chat import join, send
from grpcchat.cli.grpclogs import set_grpc_core_logs
from grpcchat.cli.health import health
from grpcchat.cli.proto import gen_proto
from grpcchat.cli.reading import history, rooms, who
from grpcchat.cli.serve import serve
from grpcchat.cli.token import token
from grpcchat.cli.version import VERSION_OPTIONS, version_line

app = typer.Typer(
    name="grpcchat",
    help="Session-based real-time chat over gRPC: run a server, join rooms, script messages.",
    no_args_is_help=True,
    # --install-completion / --show-completion; the fast path leaves completion to Typer.
    add_completion=True,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)
# In the order `grpcchat --help` lists them.
for _command in (serve, join, send, history, rooms, who, health, token, bench):
    app.command()(_command)
app.command("gen-proto")(gen_proto)


def _print_version(value: bool) -> None:
    if value:
        print(version_line())
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option(
            *VERSION_OPTIONS,
            is_eager=True,
            callback=_print_version,
            help="Print the version and exit.",
        ),
    ] = False,
) -> None:
    # `grpcchat --version` without a command (a plain one skips Typer: `grpcchat.cli.fast`).
    pass


def main() -> None:
    """The Typer app alone, without `grpcchat.cli.fast`'s fast path for `send` (the console
    script is `grpcchat.cli.main`, which is that fast path)."""
    set_grpc_core_logs("ERROR")
    app()
