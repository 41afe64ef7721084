"""Domain errors: the failures a caller is expected to handle.

Each class maps to exactly one gRPC status code, in `grpcchat.server.status` (server side) and
back in `grpcchat.client` (client side). Anything else raised is a bug, not a ChatError.
"""


class ChatError(Exception):
    """An expected failure whose message is safe and useful to show a person."""


class ConfigError(ChatError):
    """A local setup problem: an unreadable file, an unsafe combination of options. Nothing was
    sent; fix the command line (exit code 1, not "rejected")."""


class InvalidInput(ChatError):
    """A name, room or text that breaks a documented rule (INVALID_ARGUMENT)."""


class SlowConsumer(ChatError):
    """A subscriber fell so far behind that its queue overflowed (RESOURCE_EXHAUSTED)."""


class NameTaken(ChatError):
    """Someone else with this name is already in the room (ALREADY_EXISTS)."""


class AlreadyJoined(ChatError):
    """The session is in that room already (ALREADY_EXISTS)."""


class TimedOut(ChatError):
    """The client did not do its part in time, e.g. a session's hello (DEADLINE_EXCEEDED)."""


class NotFound(ChatError):
    """The recipient or thing named is not there (NOT_FOUND)."""


class PermissionDenied(ChatError):
    """The caller may not do this to that, e.g. edit someone else's message (PERMISSION_DENIED)."""


class AlreadyExists(ChatError):
    """What the request would create is there already, e.g. the same reaction twice
    (ALREADY_EXISTS)."""


class LimitExceeded(ChatError):
    """Too many sessions, messages or requests (RESOURCE_EXHAUSTED). `retry_after` is in seconds
    when waiting helps (a rate limit), None when it does not."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class CapReached(ChatError):
    """A count that waiting does not lower is at its cap: the rooms a session is in, a
    message's edits, emoji or reactions (FAILED_PRECONDITION, not RESOURCE_EXHAUSTED: a retry
    succeeds only once something changes it, such as leaving a room, and never for edits)."""


class Unauthenticated(ChatError):
    """A missing, malformed, badly signed or expired token (UNAUTHENTICATED)."""


class StoreError(ChatError):
    """The history store cannot be opened or used (unreadable file, wrong schema, disk full):
    fatal at start, UNAVAILABLE for a request."""


class HistoryReplaced(StoreError):
    """The shared history this server opened is gone, or another one took its place (NATS lost
    its storage): what the server holds (positions, the epoch) is no longer that history's, so
    it stops rather than serve a mixture; started again, it serves the history there is."""


class ServerDraining(ChatError):
    """The server is shutting down; reconnect elsewhere or later (UNAVAILABLE)."""


class RemoteError(ChatError):
    """A call the server (or the network) refused; `status` is the gRPC status code's name,
    e.g. "UNAVAILABLE", so callers can react without importing grpc."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status


class NoAnswer(RemoteError):
    """A send a session wrote that got no answer within the client's timeout: the server was
    unreachable all along, or never answered (not one it refused)."""
