"""`grpcchat serve --check-config`: the effective `ServerConfig`, read generically from its
dataclass fields (nested ones flattened: `limits.rate`), so a new setting shows up without
touching this module. A field marked secret in its metadata (`grpcchat.server.config.SECRET`)
shows only whether it is set. Plain `name = value` lines in a pipe, a Rich table on a terminal.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
from datetime import timedelta

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from grpcchat.core.files import read_tls_files
from grpcchat.core.urls import redacted_url

MASK = "****"
NOT_SET = "not set"
# Derived values worth seeing beside the fields: where history really goes, what is bound.
DERIVED = ("bind_address", "store_url")


def settings(config: object, prefix: str = "") -> list[tuple[str, str, bool]]:
    """`(name, shown value, secret)` for every field of the dataclass `config`, in declaration
    order, nested dataclasses flattened under their field's name."""
    found: list[tuple[str, str, bool]] = []
    for field in dataclasses.fields(config):  # type: ignore[arg-type]
        name, value = prefix + field.name, getattr(config, field.name)
        if field.metadata.get("secret"):
            found.append((name, MASK if value else NOT_SET, True))
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            found.extend(settings(value, f"{name}."))
        else:
            found.append((name, shown(field.name, value), False))
    return found


def effective(config: object) -> list[tuple[str, str, bool]]:
    """The fields, then the derived values (`DERIVED`) the config has."""
    derived = [
        (name, shown(name, getattr(config, name)), False)
        for name in DERIVED
        if hasattr(config, name)
    ]
    return settings(config) + derived


def shown(name: str, value: object) -> str:
    """A setting's value as a person reads it (and as the flags take it, where they can)."""
    if name == "log_level" and isinstance(value, int):
        return logging.getLevelName(value).lower()
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, enum.Enum):
        return str(value.name).lower()
    if isinstance(value, timedelta):
        return _duration(value)
    if isinstance(value, str):
        return redacted_url(value) if "://" in value else value or '""'
    if isinstance(value, (tuple, list, frozenset, set)):
        return ", ".join(shown(name, v) for v in value) or '""'
    return str(value)


def _duration(value: timedelta) -> str:
    """`30d`, `10m`, `1.5s`: the largest unit that divides it."""
    seconds = value.total_seconds()
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def check_files(config: object) -> None:
    """Read every file the server would read at start, as it would (a ConfigError naming the
    one that cannot be read); nothing read is kept or shown, only whether it read."""
    if cert := getattr(config, "tls_cert", ""):
        read_tls_files(cert, getattr(config, "tls_key", ""), getattr(config, "tls_client_ca", ""))


def print_settings(items: list[tuple[str, str, bool]], console: Console) -> None:
    """A table on a terminal; `name = value` lines otherwise (for scripts and diffs)."""
    if not console.is_terminal:
        for name, value, _secret in items:
            print(f"{name} = {value}")
        return
    table = Table(box=box.SIMPLE_HEAD, title="effective configuration", title_justify="left")
    table.add_column("setting", style="cyan")
    table.add_column("value")
    for name, value, secret in items:
        table.add_row(Text(name), Text(value, style="dim" if secret else ""))
    console.print(table)


def check_and_print(config: object, console: Console, **extra: object) -> None:
    """What `serve --check-config` does once the config is built: read the files it names
    (failing as `serve` would), then print the settings, `extra` ones (options `serve` hands
    the server beside its config) last."""
    from grpcchat.cli.exits import fail
    from grpcchat.core.errors import ChatError

    try:
        check_files(config)
    except ChatError as error:
        fail(str(error))
    items = effective(config) + [(name, shown(name, v), False) for name, v in extra.items()]
    print_settings(items, console)
