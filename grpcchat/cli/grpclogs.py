"""How much gRPC's C core writes to stderr: its own lines, in its own format, which no logging
configuration reaches. Read once, as grpc is first imported; the commands import it lazily, so
setting it on the way in is in time."""

from __future__ import annotations

import os

# A level the user set (GRPC_VERBOSITY in the environment) is theirs: never replaced.
_USERS_OWN = "GRPC_VERBOSITY" in os.environ


def set_grpc_core_logs(level: str) -> None:
    """`ERROR` for every command: gRPC core logs connection details (TLS handshakes, GOAWAYs)
    at INFO, and a command's stderr is for its own one-line errors. `NONE` for json logs,
    which promise one JSON object a line (a failed bind is the server's own error line)."""
    if not _USERS_OWN:
        os.environ["GRPC_VERBOSITY"] = level
