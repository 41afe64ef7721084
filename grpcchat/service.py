"""The gRPC servicer: protobuf <-> domain, and domain errors -> status codes, in one place.

Streaming responses are handed to gRPC as ready-made bytes: each message is encoded once per
wire format (see `models.Envelope`) however many streams carry it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable

import grpc
from grpc import aio

from grpcchat import codec
from grpcchat.core import Hub, Subscription
from grpcchat.errors import ChatError, InvalidInput, ServerDraining, SlowConsumer
from grpcchat.gen.chat.v1 import chat_service_pb2 as pb
from grpcchat.models import DEFAULT_ROOM, Envelope, Message

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["ChatService"].full_name

_STATUS_OF: dict[type[ChatError], grpc.StatusCode] = {
    InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    SlowConsumer: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ServerDraining: grpc.StatusCode.UNAVAILABLE,
}

message_log = logging.getLogger("grpcchat.messages")
log = logging.getLogger("grpcchat.service")


def status_of(error: ChatError) -> grpc.StatusCode:
    for cls in type(error).__mro__:
        if cls in _STATUS_OF:
            return _STATUS_OF[cls]
    return grpc.StatusCode.UNKNOWN


async def _abort(context: aio.ServicerContext[object, object], error: ChatError) -> None:
    await context.abort(status_of(error), str(error))


class ChatServicer:
    """Implements chat.v1.ChatService on top of the hub."""

    def __init__(self, hub: Hub) -> None:
        self._hub = hub

    async def _post(self, sender: str, text: str, room: str) -> Message:
        message = await self._hub.post(sender, text, room)
        message_log.info(
            '🟢 [%s]: "%s"', message.sender, message.text, extra={"room": message.room}
        )
        return message

    async def Send(
        self, request: pb.SendRequest, context: aio.ServicerContext[object, object]
    ) -> pb.SendResponse:
        try:
            message = await self._post(request.sender, request.text, request.room)
        except ChatError as error:
            await _abort(context, error)
            raise  # unreachable: abort raises
        return pb.SendResponse(message=codec.to_proto(message))

    async def Subscribe(
        self, request: pb.SubscribeRequest, context: aio.ServicerContext[object, object]
    ) -> None:
        try:
            async with self._hub.subscribe(request.room, request.name) as subscription:
                await self._pump(subscription, context, _frame_events)
        except ChatError as error:
            await _abort(context, error)

    async def Chat(
        self,
        requests: AsyncIterator[pb.ChatMessage],
        context: aio.ServicerContext[object, object],
    ) -> None:
        """The article's stream: lobby only, one ChatMessage per response."""
        try:
            async with self._hub.subscribe(DEFAULT_ROOM) as subscription:
                reader = asyncio.create_task(self._read_legacy(requests, subscription))
                try:
                    await self._pump(subscription, context, _each_chat_message)
                finally:
                    reader.cancel()
        except ChatError as error:
            await _abort(context, error)

    async def _read_legacy(
        self, requests: AsyncIterator[pb.ChatMessage], subscription: Subscription
    ) -> None:
        """Post what a Chat client writes; its half-close ends the call, as in the article."""
        try:
            async for request in requests:
                await self._post(request.sender, request.text, DEFAULT_ROOM)
        except ChatError as error:
            subscription.close(error)
            return
        subscription.close()

    async def _pump(
        self,
        subscription: Subscription,
        context: aio.ServicerContext[object, object],
        encode: Callable[[list[Envelope]], list[bytes]],
    ) -> None:
        """Be the subscription's writer until it ends; raises the error that ended it."""
        # A client that stops reading leaves our write pending forever (HTTP/2 flow control), so
        # the write loop cannot notice its own eviction: a watchdog ends the call instead.
        watchdog = asyncio.create_task(_abort_when_evicted(subscription, context))
        try:
            # Headers now, not with the first message: they tell the client the subscription is
            # registered, so everything posted from here on will reach it.
            await context.send_initial_metadata(())
            async for batch in subscription.batches():
                for payload in encode(batch):
                    await context.write(payload)
        except SlowConsumer:
            await watchdog
        finally:
            watchdog.cancel()


async def _abort_when_evicted(
    subscription: Subscription, context: aio.ServicerContext[object, object]
) -> None:
    await subscription.closed.wait()
    if isinstance(subscription.error, SlowConsumer):
        log.warning(
            "disconnecting slow consumer %r in room %s", subscription.name, subscription.room
        )
        await _abort(context, subscription.error)


def _frame_events(batch: list[Envelope]) -> list[bytes]:
    """A whole batch as one SubscribeResponse."""
    return [b"".join(envelope.encoded(codec.encode_event_frame) for envelope in batch)]


def _each_chat_message(batch: list[Envelope]) -> list[bytes]:
    """The article's stream carries one ChatMessage per response."""
    return [envelope.encoded(codec.encode_chat_message) for envelope in batch]


def add_to_server(servicer: ChatServicer, server: aio.Server) -> None:
    """Register the service with raw-bytes responses for the streams (encoded by us, once)."""
    handlers = {
        "Chat": grpc.stream_stream_rpc_method_handler(
            servicer.Chat, request_deserializer=pb.ChatMessage.FromString
        ),
        "Send": grpc.unary_unary_rpc_method_handler(
            servicer.Send,
            request_deserializer=pb.SendRequest.FromString,
            response_serializer=pb.SendResponse.SerializeToString,
        ),
        "Subscribe": grpc.unary_stream_rpc_method_handler(
            servicer.Subscribe, request_deserializer=pb.SubscribeRequest.FromString
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
