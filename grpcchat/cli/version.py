"""`grpcchat --version`: the installed distribution's version. Neither Typer nor Rich is
imported here, so the console script's fast path (`grpcchat.cli.fast`) prints it too."""

from __future__ import annotations

VERSION_OPTIONS = ("--version", "-V")


def version() -> str:
    """The version pip installed; in a checkout that is not installed, the package's own."""
    from importlib import metadata

    try:
        return metadata.version("grpcchat")
    except metadata.PackageNotFoundError:
        from grpcchat import __version__

        return __version__


def version_line() -> str:
    return f"grpcchat {version()}"
