"""History engines: implementations of `grpcchat.core.history.HistoryStore`.

`memory.py` keeps history in this process (ephemeral), `sqlite.py` in a SQLite file (the
embedded default). `grpcchat.server.engines.open_store(url)` picks one by URL.
"""
