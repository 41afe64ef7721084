"""Async client library: send, follow a room, reconnect. The CLI uses nothing else.

Against a grpcchat server a session follows a room with `Subscribe` and posts with `Send`.
Against a server that speaks only the article's `Chat` stream (its Go server) the same API
degrades to that stream: lobby only, no ids, no positions.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType

import grpc
from grpc import aio

from grpcchat import codec
from grpcchat.backoff import Backoff
from grpcchat.config import ClientConfig
from grpcchat.errors import RemoteError
from grpcchat.gen.chat.v1 import chat_service_pb2 as pb
from grpcchat.gen.chat.v1 import chat_service_pb2_grpc as pb_grpc
from grpcchat.models import DEFAULT_ROOM, Message
from grpcchat.validation import check_name, check_room, check_text

# Failures a live session rides out by reconnecting; anything else is the caller's to handle.
RETRYABLE = frozenset(
    {"UNAVAILABLE", "RESOURCE_EXHAUSTED", "CANCELLED", "INTERNAL", "UNKNOWN", "DEADLINE_EXCEEDED"}
)

_CHANNEL_OPTIONS = [
    # gRPC's own reconnect backoff grows to two minutes; a chat client wants the server back
    # within seconds of it returning.
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 5000),
]


@dataclass(frozen=True, slots=True)
class Connected:
    """The session is live: every message posted from now on will arrive."""

    room: str
    legacy: bool  # the server speaks only the article's Chat stream


@dataclass(frozen=True, slots=True)
class Reconnecting:
    """The session lost its stream and retries after `delay` seconds."""

    reason: str
    delay: float


FeedEvent = Message | Connected | Reconnecting


def remote_error(error: grpc.RpcError, addr: str) -> RemoteError:
    """Turn a gRPC failure into a RemoteError with a message a person understands."""
    code: grpc.StatusCode = error.code()
    details = error.details() or ""
    if code == grpc.StatusCode.UNAVAILABLE and (
        "connect" in details.lower() or "DNS" in details or not details
    ):
        details = f"cannot reach a chat server at {addr} ({details or 'no response'})"
    elif code == grpc.StatusCode.DEADLINE_EXCEEDED:
        details = f"no answer from {addr} in time"
    return RemoteError(code.name, details)


class ChatClient:
    """A connection to one chat server. `async with ChatClient(config) as client: ...`"""

    def __init__(self, config: ClientConfig) -> None:
        self.config = config
        self._channel = aio.insecure_channel(config.addr, options=_CHANNEL_OPTIONS)
        self._stub = pb_grpc.ChatServiceStub(self._channel)

    async def __aenter__(self) -> ChatClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._channel.close(None)

    async def send(
        self, sender: str, text: str, room: str = "", *, wait_for_ready: bool = False
    ) -> Message:
        """Post one message; return it as the server accepted it (id, position, time)."""
        request = pb.SendRequest(
            sender=check_name(sender), text=check_text(text), room=check_room(room)
        )
        try:
            response: pb.SendResponse = await self._stub.Send(
                request, timeout=self.config.timeout, wait_for_ready=wait_for_ready
            )
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.UNIMPLEMENTED and request.room == DEFAULT_ROOM:
                return await self._send_over_chat(request.sender, request.text)
            raise remote_error(error, self.config.addr) from None
        return codec.from_proto(response.message)

    async def _send_over_chat(self, sender: str, text: str) -> Message:
        """One message over the article's stream, for servers without Send.

        Half-closing and reading to the end is what proves the server took the message: the
        article's server ends the call only after it has broadcast everything it received.
        """
        sent_at = datetime.now(UTC)
        message = Message(
            id="", room=DEFAULT_ROOM, sender=sender, text=text, sent_at=sent_at, seq=0
        )
        # No request iterator: the call is driven with write()/done_writing().
        call = self._stub.Chat(timeout=self.config.timeout)  # type: ignore[call-arg]
        try:
            await call.write(codec.to_proto(message))
            await call.done_writing()
            async for _ in call:
                pass
        except grpc.RpcError as error:
            raise remote_error(error, self.config.addr) from None
        return message

    def session(self, name: str, room: str = "") -> ChatSession:
        return ChatSession(self, check_name(name), check_room(room))


class ChatSession:
    """One user in one room: `events()` yields what happens, `send()` posts."""

    def __init__(self, client: ChatClient, name: str, room: str) -> None:
        self.client = client
        self.name = name
        self.room = room
        self.legacy = False
        self._legacy_call: aio.StreamStreamCall[pb.ChatMessage, pb.ChatMessage] | None = None

    async def events(self) -> AsyncIterator[FeedEvent]:
        """Messages of the room, with Connected/Reconnecting in between, forever.

        The first connection must succeed (else RemoteError); after that, lost streams are
        retried with jittered backoff and only non-retryable failures are raised.
        """
        backoff = Backoff()
        connected_once = False
        while True:
            try:
                async for event in self._attempt():
                    if isinstance(event, Connected):
                        connected_once = True
                        backoff.reset()
                    yield event
                reason = "the server ended the stream"
            except RemoteError as error:
                if not connected_once or error.status not in RETRYABLE:
                    raise
                reason = str(error)
            delay = backoff.next_delay()
            yield Reconnecting(reason, delay)
            await asyncio.sleep(delay)

    async def _attempt(self) -> AsyncIterator[FeedEvent]:
        if not self.legacy:
            call = self.client._stub.Subscribe(pb.SubscribeRequest(name=self.name, room=self.room))
            try:
                # The server sends headers only once the subscription is registered.
                await call.initial_metadata()
                if call.done():
                    await call.code()
                    async for _ in call:  # raises the call's error
                        pass
                yield Connected(self.room, legacy=False)
                async for response in call:
                    for item in response.events:
                        if item.HasField("message"):
                            yield codec.from_proto(item.message)
                return
            except grpc.RpcError as error:
                if error.code() != grpc.StatusCode.UNIMPLEMENTED:
                    raise remote_error(error, self.client.config.addr) from None
                if self.room != DEFAULT_ROOM:
                    raise RemoteError(
                        "UNIMPLEMENTED",
                        f"this server has no rooms; only the default room {DEFAULT_ROOM!r} works",
                    ) from None
                self.legacy = True
            finally:
                call.cancel()
        async for event in self._attempt_legacy():
            yield event

    async def _attempt_legacy(self) -> AsyncIterator[FeedEvent]:
        try:
            await asyncio.wait_for(self.client._channel.channel_ready(), self.client.config.timeout)
        except TimeoutError:
            raise RemoteError(
                "UNAVAILABLE", f"cannot reach a chat server at {self.client.config.addr}"
            ) from None
        call = self.client._stub.Chat()  # type: ignore[call-arg]
        self._legacy_call = call
        try:
            yield Connected(DEFAULT_ROOM, legacy=True)
            async for message in call:
                yield codec.from_proto(message, DEFAULT_ROOM)
        except grpc.RpcError as error:
            raise remote_error(error, self.client.config.addr) from None
        finally:
            self._legacy_call = None
            call.cancel()

    async def send(self, text: str) -> Message:
        """Post to the session's room. While reconnecting, waits (up to the client's timeout)
        for the server to come back rather than failing at once."""
        if not self.legacy:
            return await self.client.send(self.name, text, self.room, wait_for_ready=True)
        call = self._legacy_call
        if call is None:
            raise RemoteError("UNAVAILABLE", "not connected; try again in a moment")
        message = Message("", DEFAULT_ROOM, self.name, check_text(text), datetime.now(UTC), 0)
        try:
            await call.write(codec.to_proto(message))
        except grpc.RpcError as error:
            raise remote_error(error, self.client.config.addr) from None
        return message

    async def aclose(self) -> None:
        """Leave. On the article's stream, half-close and give the server a moment to finish,
        so the last message written is not lost."""
        call = self._legacy_call
        if call is not None and not call.done():
            try:
                await call.done_writing()
                await asyncio.wait_for(call.code(), timeout=2.0)
            except (grpc.RpcError, TimeoutError):
                pass
