"""The `grpcchat` command: a thin Typer app over the library. Commands parse options into a
config, make one library call and print; Rich and prompt_toolkit live here and nowhere else."""

from grpcchat.cli.app import app, main

__all__ = ["app", "main"]
