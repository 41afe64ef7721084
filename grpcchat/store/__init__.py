"""History stores: the durable, ordered log of every room, behind one Protocol.

`open_store(url)` picks the engine by URL scheme and imports it lazily:
`sqlite:///path/to/history.db` (the embedded default) or `memory://` (ephemeral).
"""

from grpcchat.store.base import Appended, HistoryStore, Retention, StoreError, open_store

__all__ = ["Appended", "HistoryStore", "Retention", "StoreError", "open_store"]
