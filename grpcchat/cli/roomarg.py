"""A room as a person types it: every command prints rooms as `#ops`, so `--room '#ops'`,
`/join #ops` and `ops` all name the same room. (A room name never holds `#`.)"""

from __future__ import annotations


def room_argument(text: str) -> str:
    """`text` without one leading `#`. A lone `#` stays as it is, for the server to refuse:
    it must not quietly mean the default room, as "" does."""
    return text[1:] if text.startswith("#") and len(text) > 1 else text
