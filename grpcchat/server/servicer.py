"""The gRPC servicer: authentication, protobuf <-> domain, and domain errors -> status codes,
in one place.

Streaming responses are handed to gRPC as ready-made bytes: each event is encoded once per wire
format (see `models.Envelope`) however many streams carry it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Concatenate, ParamSpec, TypeVar

import grpc
from grpc import aio

from grpcchat.core.errors import (
    ChatError,
    InvalidInput,
    LimitExceeded,
    NameTaken,
    NotFound,
    ServerDraining,
    SlowConsumer,
    StoreError,
    Unauthenticated,
)
from grpcchat.core.hub import Hub
from grpcchat.core.models import DEFAULT_ROOM, Envelope, Message, RequestRefused
from grpcchat.core.session import Session
from grpcchat.gen.chat.v1 import chat_service_pb2 as pb
from grpcchat.server.auth import Identity, TokenAuthority
from grpcchat.wire import codec

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["ChatService"].full_name

_STATUS_OF: dict[type[ChatError], grpc.StatusCode] = {
    InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    NameTaken: grpc.StatusCode.ALREADY_EXISTS,
    NotFound: grpc.StatusCode.NOT_FOUND,
    LimitExceeded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    SlowConsumer: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    ServerDraining: grpc.StatusCode.UNAVAILABLE,
    # The history failed (disk full, I/O error): the server's fault, maybe passing.
    StoreError: grpc.StatusCode.UNAVAILABLE,
}
# A batch is split into responses of at most this size (a single event may exceed it: the
# largest message is ~16 kB, far below the 4 MB default limit of gRPC clients).
MAX_RESPONSE_BYTES = 1 << 20
# How long a session may take to say hello.
HELLO_TIMEOUT = 10.0
# How long a refused session waits for its client to hang up before the call is ended.
HELLO_REFUSAL_GRACE = 2.0

message_log = logging.getLogger("grpcchat.messages")
log = logging.getLogger("grpcchat.server.servicer")

Context = aio.ServicerContext[Any, Any]
_P = ParamSpec("_P")
_R = TypeVar("_R")


def status_of(error: ChatError) -> grpc.StatusCode:
    for cls in type(error).__mro__:
        if cls in _STATUS_OF:
            return _STATUS_OF[cls]
    return grpc.StatusCode.UNKNOWN


async def _abort(context: Context, error: ChatError) -> None:
    trailing: tuple[tuple[str, str], ...] = ()
    if isinstance(error, LimitExceeded) and error.retry_after is not None:
        trailing = ((codec.RETRY_AFTER_KEY, str(int(error.retry_after * 1000) + 1)),)
    await context.abort(status_of(error), str(error), trailing)


def _maps_errors(
    handler: Callable[Concatenate[ChatServicer, Any, Context, _P], Awaitable[_R]],
) -> Callable[Concatenate[ChatServicer, Any, Context, _P], Awaitable[_R]]:
    """End the call with the error's status when a handler raises a ChatError."""

    async def wrapper(
        self: ChatServicer, request: Any, context: Context, *args: _P.args, **kwargs: _P.kwargs
    ) -> _R:
        try:
            return await handler(self, request, context, *args, **kwargs)
        except ChatError as error:
            await _abort(context, error)
            raise AssertionError("unreachable: abort raises") from error

    return functools.update_wrapper(wrapper, handler)  # type: ignore[return-value]


class ChatServicer:
    """Implements chat.v1.ChatService on top of the hub."""

    def __init__(self, hub: Hub, auth: TokenAuthority | None = None) -> None:
        self._hub = hub
        self._auth = auth

    def _identify(self, context: Context) -> Identity | None:
        """The caller's verified identity with auth on; None with auth off."""
        if self._auth is None:
            return None
        header = dict(context.invocation_metadata() or ()).get("authorization")
        return self._auth.verify_header(header if isinstance(header, str) else None)

    async def _post(self, request: pb.SendRequest, identity: Identity | None) -> pb.SendResponse:
        # With auth on the token says who is speaking; the request's sender is ignored.
        sender = identity.name if identity else request.sender
        appended = await self._hub.post(
            sender,
            request.text,
            room=request.room,
            key=request.key,
            recipient=request.recipient,
            action=request.action,
        )
        if not appended.duplicate:
            _log_message(appended.message)
        return pb.SendResponse(
            message=codec.to_proto(appended.message), duplicate=appended.duplicate
        )

    @_maps_errors
    async def Send(self, request: pb.SendRequest, context: Context) -> pb.SendResponse:
        return await self._post(request, self._identify(context))

    @_maps_errors
    async def History(self, request: pb.HistoryRequest, context: Context) -> pb.HistoryResponse:
        self._identify(context)
        messages = await self._hub.history(
            request.room,
            before=request.before_seq or None,
            after=request.after_seq or None,
            limit=request.limit or 50,
            newest_first=request.newest_first,
        )
        return pb.HistoryResponse(
            messages=[codec.to_proto(m) for m in messages], epoch=self._hub.epoch
        )

    @_maps_errors
    async def ListRooms(
        self, request: pb.ListRoomsRequest, context: Context
    ) -> pb.ListRoomsResponse:
        self._identify(context)
        rooms = await self._hub.rooms()
        return pb.ListRoomsResponse(
            rooms=[pb.RoomInfo(name=r.name, members=r.members, messages=r.messages) for r in rooms]
        )

    @_maps_errors
    async def ListMembers(
        self, request: pb.ListMembersRequest, context: Context
    ) -> pb.ListMembersResponse:
        self._identify(context)
        return pb.ListMembersResponse(members=self._hub.members(request.room))

    @_maps_errors
    async def Subscribe(self, request: pb.SubscribeRequest, context: Context) -> None:
        identity = self._identify(context)
        name = identity.name if identity else request.name
        async with self._hub.connect(name, authenticated=identity is not None) as session:
            after = codec.position_from_proto(request.after) if request.HasField("after") else None
            await self._hub.join(session, request.room, after=after, history=request.history)
            await self._pump(session, context, identity, _frame_events)

    @_maps_errors
    async def Connect(self, requests: AsyncIterator[pb.ConnectRequest], context: Context) -> None:
        identity = self._identify(context)
        # Headers first: the client writes nothing until it knows this server has Connect.
        await context.send_initial_metadata(())
        try:
            first = await asyncio.wait_for(anext(aiter(requests), None), HELLO_TIMEOUT)
        except TimeoutError:
            raise InvalidInput(f"no hello within {HELLO_TIMEOUT:g}s") from None
        async with contextlib.AsyncExitStack() as stack:
            try:
                if first is None or first.WhichOneof("action") != "hello":
                    raise InvalidInput("a session starts with a hello")
                name = identity.name if identity else first.hello.name
                if not name:
                    raise InvalidInput("name must not be empty")
                session = await stack.enter_async_context(
                    self._hub.connect(name, authenticated=identity is not None)
                )
            except ChatError as error:
                await _refuse_hello(requests, context, error)
                raise
            steering = asyncio.create_task(self._steer(requests, session))
            try:
                await self._pump(session, context, identity, _frame_events, headers_sent=True)
            finally:
                steering.cancel()

    async def _steer(self, requests: AsyncIterator[pb.ConnectRequest], session: Session) -> None:
        """Apply joins and leaves; a refused one is reported as an event, the session goes on.
        The client's half-close ends the session."""
        async for request in requests:
            if session.closed.is_set():
                break
            action = request.WhichOneof("action")
            room = ""
            try:
                if action == "join":
                    room = request.join.room
                    after = request.join.after if request.join.HasField("after") else None
                    await self._hub.join(
                        session,
                        room,
                        after=codec.position_from_proto(after) if after else None,
                        history=request.join.history,
                    )
                elif action == "leave":
                    room = request.leave.room
                    await self._hub.leave(session, room)
                else:
                    raise InvalidInput("hello may only open a session")
            except ChatError as error:
                refused = RequestRefused(room, status_of(error).name, str(error))
                session.offer(Envelope(refused))
        session.close()

    @_maps_errors
    async def Chat(self, requests: AsyncIterator[pb.ChatMessage], context: Context) -> None:
        """The article's stream: lobby only, one ChatMessage per response."""
        identity = self._identify(context)
        # Anonymous without auth (the article's client names itself per message); with auth
        # the token's user, so its streams count against its limits and show in presence.
        name = identity.name if identity else ""
        async with self._hub.connect(name, authenticated=identity is not None) as session:
            await self._hub.join(session, DEFAULT_ROOM)
            reader = asyncio.create_task(self._read_legacy(requests, session, identity))
            try:
                await self._pump(session, context, identity, _each_chat_message)
            finally:
                reader.cancel()

    async def _read_legacy(
        self,
        requests: AsyncIterator[pb.ChatMessage],
        session: Session,
        identity: Identity | None,
    ) -> None:
        """Post what a Chat client writes; its half-close ends the call, as in the article.

        The article's stream has no way to refuse one message, so over the rate limit it is
        throttled (we stop reading until the sender may post again; HTTP/2 flow control holds
        the client back) instead of being ended."""
        try:
            async for request in requests:
                send = pb.SendRequest(sender=request.sender, text=request.text)
                while True:
                    try:
                        await self._post(send, identity)
                        break
                    except LimitExceeded as error:
                        if error.retry_after is None:
                            raise
                        await asyncio.sleep(error.retry_after)
        except ChatError as error:
            session.close(error)
            return
        session.close()

    async def _pump(
        self,
        session: Session,
        context: Context,
        identity: Identity | None,
        encode: Callable[[list[Envelope]], list[bytes]],
        *,
        headers_sent: bool = False,
    ) -> None:
        """Be the session's writer until it ends; raises the error that ended it."""
        # A client that stops reading leaves our write pending forever (HTTP/2 flow control), so
        # the write loop cannot notice its own eviction: a watchdog ends the call instead.
        watchdog = asyncio.create_task(_abort_when_evicted(session, context))
        expiry = None
        if identity is not None:
            delay = (identity.expires_at - datetime.now(UTC)).total_seconds()
            expired = Unauthenticated("token expired; mint a new one with `grpcchat token`")
            expiry = asyncio.get_running_loop().call_later(delay, session.close, expired)
        try:
            if not headers_sent:
                # Headers now, not with the first event: they tell the client the session is
                # registered, so everything posted from here on will reach it.
                await context.send_initial_metadata(())
            async for batch in session.batches():
                for payload in encode(batch):
                    await context.write(payload)
        except SlowConsumer:
            await watchdog
        finally:
            watchdog.cancel()
            if expiry is not None:
                expiry.cancel()


async def _refuse_hello(
    requests: AsyncIterator[pb.ConnectRequest], context: Context, error: ChatError
) -> None:
    """Say why a session cannot open, as an event, and let the client stop writing before the
    call ends: ending it while the client's joins are still in flight makes grpc.aio report
    INTERNAL instead of our status (grpc/grpc#36066)."""
    refused = RequestRefused("", status_of(error).name, str(error))
    await context.write(_frame_events([Envelope(refused)])[0])
    with contextlib.suppress(TimeoutError, grpc.RpcError, asyncio.CancelledError):
        async with asyncio.timeout(HELLO_REFUSAL_GRACE):
            async for _ in requests:
                pass


def _log_message(message: Message) -> None:
    where = f"@{message.recipient}" if message.recipient else f"#{message.room}"
    message_log.info('🟢 [%s]: "%s"', message.sender, message.text, extra={"where": where})


async def _abort_when_evicted(session: Session, context: Context) -> None:
    await session.closed.wait()
    if isinstance(session.error, SlowConsumer):
        log.warning(
            "disconnecting slow consumer %r (rooms %s)", session.name, sorted(session.rooms)
        )
        await _abort(context, session.error)


def _frame_events(batch: list[Envelope]) -> list[bytes]:
    """A batch as few SubscribeResponse / ConnectResponse messages as fit under
    MAX_RESPONSE_BYTES each (gRPC clients refuse messages over 4 MB by default)."""
    responses: list[bytes] = []
    frames: list[bytes] = []
    size = 0
    for envelope in batch:
        frame = envelope.encoded(codec.encode_event_frame)
        if frames and size + len(frame) > MAX_RESPONSE_BYTES:
            responses.append(b"".join(frames))
            frames, size = [], 0
        frames.append(frame)
        size += len(frame)
    if frames:
        responses.append(b"".join(frames))
    return responses


def _each_chat_message(batch: list[Envelope]) -> list[bytes]:
    """The article's stream carries one ChatMessage per response, and only messages."""
    return [
        envelope.encoded(codec.encode_chat_message)
        for envelope in batch
        if isinstance(envelope.event, Message)
    ]


def add_to_server(servicer: ChatServicer, server: aio.Server) -> None:
    """Register the service; streams get raw-bytes responses (encoded by us, once)."""

    def unary(
        handler: Any, request_type: Any, response_type: Any
    ) -> grpc.RpcMethodHandler[Any, Any]:
        return grpc.unary_unary_rpc_method_handler(
            handler,
            request_deserializer=request_type.FromString,
            response_serializer=response_type.SerializeToString,
        )

    handlers = {
        "Chat": grpc.stream_stream_rpc_method_handler(
            servicer.Chat, request_deserializer=pb.ChatMessage.FromString
        ),
        "Connect": grpc.stream_stream_rpc_method_handler(
            servicer.Connect, request_deserializer=pb.ConnectRequest.FromString
        ),
        "Subscribe": grpc.unary_stream_rpc_method_handler(
            servicer.Subscribe, request_deserializer=pb.SubscribeRequest.FromString
        ),
        "Send": unary(servicer.Send, pb.SendRequest, pb.SendResponse),
        "History": unary(servicer.History, pb.HistoryRequest, pb.HistoryResponse),
        "ListRooms": unary(servicer.ListRooms, pb.ListRoomsRequest, pb.ListRoomsResponse),
        "ListMembers": unary(servicer.ListMembers, pb.ListMembersRequest, pb.ListMembersResponse),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))


__all__ = ["SERVICE_NAME", "ChatServicer", "add_to_server", "status_of"]
