"""ChatErrors -> Connect errors, through the server's one status mapping (`status_of`)."""

from __future__ import annotations

import grpc
from connectrpc.code import Code
from connectrpc.errors import ConnectError

from grpcchat.core.errors import ChatError
from grpcchat.server.status import status_of

# grpc.StatusCode and Connect's Code share their names, except for one spelling.
_RENAMED = {grpc.StatusCode.CANCELLED: Code.CANCELED}


def code_of(status: grpc.StatusCode) -> Code:
    return _RENAMED.get(status) or Code[status.name]


def connect_error(error: ChatError) -> ConnectError:
    """The Connect error a client sees for `error`: the same code a gRPC client would."""
    return ConnectError(code_of(status_of(error)), str(error))
