"""Domain errors -> gRPC status codes, in exactly one place, and the decorator that ends a call
with the status of the ChatError its handler raised."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any, Concatenate, ParamSpec, TypeVar

import grpc
from grpc import aio

from grpcchat.core.errors import (
    AlreadyExists,
    AlreadyJoined,
    CapReached,
    ChatError,
    InvalidInput,
    LimitExceeded,
    NameTaken,
    NotFound,
    PermissionDenied,
    ServerDraining,
    SlowConsumer,
    StoreError,
    TimedOut,
    Unauthenticated,
)
from grpcchat.server.parsing import check_readable
from grpcchat.wire import codec

Context = aio.ServicerContext[Any, Any]
_S = TypeVar("_S")
_P = ParamSpec("_P")
_R = TypeVar("_R")

_STATUS_OF: dict[type[ChatError], grpc.StatusCode] = {
    InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    NameTaken: grpc.StatusCode.ALREADY_EXISTS,
    AlreadyJoined: grpc.StatusCode.ALREADY_EXISTS,
    AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    TimedOut: grpc.StatusCode.DEADLINE_EXCEEDED,
    NotFound: grpc.StatusCode.NOT_FOUND,
    LimitExceeded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    SlowConsumer: grpc.StatusCode.RESOURCE_EXHAUSTED,
    CapReached: grpc.StatusCode.FAILED_PRECONDITION,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    ServerDraining: grpc.StatusCode.UNAVAILABLE,
    # The history failed (disk full, I/O error): the server's fault, maybe passing.
    StoreError: grpc.StatusCode.UNAVAILABLE,
}


def status_of(error: ChatError) -> grpc.StatusCode:
    for cls in type(error).__mro__:
        if cls in _STATUS_OF:
            return _STATUS_OF[cls]
    return grpc.StatusCode.UNKNOWN


async def abort(context: Context, error: ChatError) -> None:
    trailing: tuple[tuple[str, str], ...] = ()
    if isinstance(error, LimitExceeded) and error.retry_after is not None:
        trailing = ((codec.RETRY_AFTER_KEY, str(int(error.retry_after * 1000) + 1)),)
    await context.abort(status_of(error), str(error), trailing)


def maps_errors(
    handler: Callable[Concatenate[_S, Any, Context, _P], Awaitable[_R]],
) -> Callable[Concatenate[_S, Any, Context, _P], Awaitable[_R]]:
    """End the call with the error's status when a handler raises a ChatError; a request that
    did not parse (see `parsing`) is refused as InvalidInput, a stream's when it is read."""

    async def wrapper(
        self: _S, request: Any, context: Context, *args: _P.args, **kwargs: _P.kwargs
    ) -> _R:
        try:
            request = check_readable(request)
            return await handler(self, request, context, *args, **kwargs)
        except ChatError as error:
            await abort(context, error)
            raise AssertionError("unreachable: abort raises") from error

    return functools.update_wrapper(wrapper, handler)  # type: ignore[return-value]
