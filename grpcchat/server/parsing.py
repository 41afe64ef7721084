"""Requests that do not parse (a string that is not UTF-8, a truncated field) are refused like
any other bad input, INVALID_ARGUMENT with the reason, by the handler's own error mapping:
gRPC's deserializer would end the call UNKNOWN ("Unexpected DecodeError"), or, inside a
stream, kill the task reading it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from google.protobuf.message import DecodeError, Message

from grpcchat.core.errors import InvalidInput


class Unreadable:
    """What `parser` hands over instead of a request that did not parse."""

    __slots__ = ("error",)

    def __init__(self, error: InvalidInput) -> None:
        self.error = error


def parser(message_type: type[Message]) -> Callable[[bytes], Message | Unreadable]:
    """A request deserializer that never raises: an unreadable request becomes `Unreadable`."""
    name = message_type.DESCRIPTOR.full_name

    def parse(raw: bytes) -> Message | Unreadable:
        try:
            return message_type.FromString(raw)
        except DecodeError as error:
            return Unreadable(InvalidInput(f"the request is not a readable {name} ({error})"))

    return parse


def check_readable(request: Any) -> Any:
    """The request, or its InvalidInput raised; a stream of them, checked as it is read."""
    if isinstance(request, Unreadable):
        raise request.error
    if hasattr(request, "__aiter__"):
        return _readable(request)
    return request


async def _readable(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for request in requests:
        if isinstance(request, Unreadable):
            raise request.error
        yield request
