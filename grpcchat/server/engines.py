"""Engines chosen by URL: the composition root's one place that knows every implementation.

Each engine is imported only when its URL is used, so the embedded default never loads a
client library it does not need.
"""

from __future__ import annotations

from grpcchat.core.errors import StoreError
from grpcchat.core.history import HistoryStore, Retention
from grpcchat.core.urls import redacted_url


async def open_store(url: str, retention: Retention | None = None) -> HistoryStore:
    """Open the engine for `url`, importing it only when used.

    `memory://` keeps history in this process only (a new epoch per start);
    `sqlite:///absolute/path.db` (or `sqlite://relative.db`) keeps it in a SQLite file, created
    if missing; `nats://host:4222[?stream=NAME&replicas=N]` keeps it in a JetStream stream
    (`grpcchat[nats]`), shared by every server using that stream. Raises StoreError for an
    unknown scheme, an unusable file or an unreachable NATS.
    """
    check_store_url(url)
    retention = retention or Retention()
    scheme, _, path = url.partition("://")
    if scheme == "memory":
        from grpcchat.store.memory import MemoryStore

        return MemoryStore(retention)
    if scheme == "sqlite":
        from grpcchat.store.sqlite import SqliteStore

        return await SqliteStore.open(path, retention)
    if scheme == "nats":
        try:
            from grpcchat.store.nats import NatsStore
        except ImportError as exc:
            raise StoreError(
                f"the nats store needs nats-py ({exc}): pip install 'grpcchat[nats]'"
            ) from None
        return await NatsStore.open(url, retention)
    raise AssertionError(f"check_store_url let {redacted_url(url)!r} through")


def check_store_url(url: str) -> None:
    """StoreError unless `url` names an engine `open_store` knows, with what it needs (without
    opening anything: `serve --check-config` checks it as `serve` would)."""
    scheme, _, path = url.partition("://")
    if scheme.lower() in ("memory", "sqlite", "nats") and scheme != scheme.lower():
        raise StoreError(
            f"write the scheme of {redacted_url(url)!r} in lower case: {scheme.lower()}://"
        )
    if scheme not in ("memory", "sqlite", "nats"):
        raise StoreError(
            f"unknown store {redacted_url(url)!r}: use memory://, sqlite:///path/to/history.db "
            "or nats://host:4222"
        )
    if scheme == "memory" and path:
        raise StoreError(f"memory:// takes nothing after it, got {redacted_url(url)!r}")
    if scheme == "sqlite" and not path:
        raise StoreError("the sqlite store needs a path: sqlite:///path/to/history.db")
    if scheme == "nats":
        try:
            from grpcchat.store.nats.codec import parse_url
        except ImportError:
            return  # without nats-py: the command says what to install instead
        parse_url(url)  # its stream, replicas and unknown options


def check_given_store_url(url: str) -> None:
    """`check_store_url` for a URL the user wrote (`--store`, `--broker`): a sqlite URL that
    looks as if it had options is refused too (taken as part of the file name, they made a
    file `history.db?mode=ro`). The URL made from `--data-dir` is not held to this: a
    directory may have any name."""
    check_store_url(url)
    scheme, _, path = url.partition("://")
    if scheme == "sqlite" and ("?" in path or "#" in path):
        raise StoreError(
            f"the sqlite store takes a file path and no options, got {url!r}: "
            "sqlite:///path/to/history.db"
        )
