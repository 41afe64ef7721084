"""chat.v1.ChatService for browsers: each call authenticates the caller from its
`Authorization` header and delegates to the gRPC servicer's protocol-neutral calls, so limits,
rate limits, refusal counters and drain behave exactly as over gRPC. Chat and Connect (bidi
streams, which browsers cannot open) answer UNIMPLEMENTED."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, Concatenate, ParamSpec, TypeVar

from connectrpc.code import Code
from connectrpc.errors import ConnectError
from connectrpc.request import RequestContext

from grpcchat.core.errors import ChatError, LimitExceeded, Unauthenticated
from grpcchat.gen.chat.v1 import chat_service_pb2 as pb
from grpcchat.server.auth import Identity
from grpcchat.server.peers import canonical_address
from grpcchat.server.servicer import ChatServicer
from grpcchat.web.errors import connect_error
from grpcchat.web.stream import HEARTBEAT_HEADER, stream_session
from grpcchat.wire import codec

# What a web call without a token is told when auth is on.
WEB_TOKEN_REQUIRED = (
    "authentication required: send `authorization: Bearer <token>` (on the page: paste it into "
    "the Token box; `grpcchat token NAME` mints one)"
)

_S = TypeVar("_S")
_Q = TypeVar("_Q")
_R = TypeVar("_R")
_P = ParamSpec("_P")

Context = RequestContext[Any, Any]


def _maps_errors(
    handler: Callable[Concatenate[_S, _Q, Context, _P], Coroutine[Any, Any, _R]],
) -> Callable[Concatenate[_S, _Q, Context, _P], Coroutine[Any, Any, _R]]:
    """End the call with the Connect code of the ChatError its handler raised."""

    @functools.wraps(handler)
    async def wrapper(
        self: _S, request: _Q, ctx: Context, /, *args: _P.args, **kwargs: _P.kwargs
    ) -> _R:
        try:
            return await handler(self, request, ctx, *args, **kwargs)
        except ChatError as error:
            raise _refusal(error, ctx) from None

    return wrapper


def _refusal(error: ChatError, ctx: Context) -> ConnectError:
    """The ConnectError that ends a call `error` refused; over a limit for now, the call's
    trailers say when to retry (`retry-after-ms`), as the gRPC port's do."""
    if isinstance(error, LimitExceeded) and error.retry_after is not None:
        ctx.response_trailers[codec.RETRY_AFTER_KEY] = str(int(error.retry_after * 1000) + 1)
    return connect_error(error)


def peer_of(ctx: Context) -> str:
    """The client's address without its port (`127.0.0.1:5000` -> `127.0.0.1`), spelled as
    the gRPC port spells it (see `peers`)."""
    address = ctx.client_address or ""
    return canonical_address(address.rsplit(":", 1)[0] if ":" in address else address)


class WebChatService:
    """Implements the generated `ChatService` protocol (chat_service_connect) on the servicer."""

    def __init__(self, servicer: ChatServicer) -> None:
        self._servicer = servicer

    def _identify(self, ctx: Context) -> Identity | None:
        headers = ctx.request_headers.getall("authorization")
        try:
            return self._servicer.identify(headers)
        except Unauthenticated:
            if headers:
                raise
            # The gRPC wording names the CLI's --token, which a browser user has not got.
            raise Unauthenticated(WEB_TOKEN_REQUIRED) from None

    @_maps_errors
    async def send(self, request: pb.SendRequest, ctx: Context, /) -> pb.SendResponse:
        try:
            identity = self._identify(ctx)
        except ChatError as error:
            self._servicer.refused(error)
            raise
        return await self._servicer.send(request, identity, peer_of(ctx))

    @_maps_errors
    async def history(self, request: pb.HistoryRequest, ctx: Context, /) -> pb.HistoryResponse:
        return await self._servicer.history(request, self._identify(ctx), peer_of(ctx))

    @_maps_errors
    async def list_rooms(
        self, request: pb.ListRoomsRequest, ctx: Context, /
    ) -> pb.ListRoomsResponse:
        return await self._servicer.list_rooms(request, self._identify(ctx), peer_of(ctx))

    @_maps_errors
    async def mark_read(self, request: pb.MarkReadRequest, ctx: Context, /) -> pb.MarkReadResponse:
        return await self._servicer.mark_read(request, self._identify(ctx), peer_of(ctx))

    @_maps_errors
    async def list_members(
        self, request: pb.ListMembersRequest, ctx: Context, /
    ) -> pb.ListMembersResponse:
        return self._servicer.list_members(request, self._identify(ctx), peer_of(ctx))

    async def subscribe(
        self, request: pb.SubscribeRequest, ctx: Context, /
    ) -> AsyncIterator[pb.SubscribeResponse]:
        """Follow one room. The first response is empty: it says the stream is registered, so
        everything posted from then on reaches it (gRPC clients learn it from the headers).
        A header tells the heartbeat: a browser cannot see a dead connection (no pings), so
        the page ends a stream that stays silent much longer than that and resumes."""
        try:
            identity = self._identify(ctx)
            heartbeat = self._servicer.heartbeat
            ctx.response_headers[HEARTBEAT_HEADER] = str(round(heartbeat * 1000))
            async with self._servicer.subscription(request, identity, peer_of(ctx)) as session:
                async for response in stream_session(
                    session, identity, self._servicer.stats, heartbeat
                ):
                    yield response
        except ChatError as error:
            raise _refusal(error, ctx) from None

    def chat(
        self, request: AsyncIterator[pb.ChatMessage], ctx: Context, /
    ) -> AsyncIterator[pb.ChatMessage]:
        raise ConnectError(Code.UNIMPLEMENTED, "Chat is served on the gRPC port only")

    def connect(
        self, request: AsyncIterator[pb.ConnectRequest], ctx: Context, /
    ) -> AsyncIterator[pb.ConnectResponse]:
        raise ConnectError(Code.UNIMPLEMENTED, "Connect is served on the gRPC port only")
