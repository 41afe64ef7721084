"""Durations as people type them: `90s`, `30m`, `24h`, `7d`, `1h30m`."""

from __future__ import annotations

import re
from datetime import timedelta

import typer

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
