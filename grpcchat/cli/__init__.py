"""The `grpcchat` command: a thin Typer app over the library. Commands parse options into a
config, make one library call and print; Rich and prompt_toolkit live here and nowhere else.

`main` (the console script) is `grpcchat.cli.fast.main`, which runs a plain `grpcchat send`
without building the Typer app; `app` (the Typer app) is imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from grpcchat.cli.fast import main

if TYPE_CHECKING:
    from grpcchat.cli.app import app

__all__ = ["app", "main"]


def __getattr__(name: str) -> Any:
    if name == "app":
        from grpcchat.cli.app import app

        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
