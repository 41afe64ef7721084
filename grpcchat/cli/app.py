"""The `grpcchat` command: the Typer app and its commands, one module per command group.

Each command parses options into a config and makes one library call; heavy imports (grpc, the
server, the client) happen inside the commands, so `grpcchat --help` starts quickly.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from typer.core import TyperCommand, TyperGroup

from grpcchat.cli.bench import bench
from grpcchat.cli.chat import join, send
from grpcchat.cli.grpclogs import set_grpc_core_logs
from grpcchat.cli.health import health
from grpcchat.cli.proto import gen_proto
from grpcchat.cli.reading import history, rooms, who
from grpcchat.cli.serve import serve
from grpcchat.cli.token import token
from grpcchat.cli.version import VERSION_OPTIONS, version_line


def _flags_without_a_type(params: list[Any]) -> list[Any]:
    """Typer 0.29 prints a value type beside every option, a flag's too (`--quiet <bool>`,
    even its own `--help`), though a flag takes no value: an empty metavar leaves it out."""
    for param in params:
        if getattr(param, "is_bool_flag", False) and param.metavar is None:
            param.metavar = ""
    return params


class _Command(TyperCommand):
    def get_params(self, ctx: Any) -> list[Any]:
        return _flags_without_a_type(super().get_params(ctx))


class _Group(TyperGroup):
    def get_params(self, ctx: Any) -> list[Any]:
        return _flags_without_a_type(super().get_params(ctx))


app = typer.Typer(
    name="grpcchat",
    cls=_Group,
    help="Session-based real-time chat over gRPC: run a server, join rooms, script messages.",
    no_args_is_help=True,
    # --install-completion / --show-completion; the fast path leaves completion to Typer.
    add_completion=True,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)
# In the order `grpcchat --help` lists them.
for _command in (serve, join, send, history, rooms, who, health, token, bench):
    app.command(cls=_Command)(_command)
app.command("gen-proto", cls=_Command)(gen_proto)


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
