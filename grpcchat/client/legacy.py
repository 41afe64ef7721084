"""The fallback for a server that speaks only the article's v1 `Chat` stream (its Go server):
the lobby only, no ids, no positions, no history, no presence.

A client learns it from the first UNIMPLEMENTED and hands over to this module: one message
over `Chat` for a send, a `LegacyStream` for a session. Nothing else knows the v1 protocol.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from datetime import UTC, datetime

import grpc
from grpc import aio

from grpcchat.client.channel import Connection
from grpcchat.client.events import Connected, FeedEvent, Sent
from grpcchat.core.errors import RemoteError
from grpcchat.core.models import DEFAULT_ROOM, Message
from grpcchat.core.validation import check_text
from grpcchat.gen.chat.v1 import chat_service_pb2 as pb
from grpcchat.wire import codec

NO_ROOMS = "this server has no rooms or direct messages; only the default room 'lobby' works"
NO_HISTORY = "this server keeps no history and has no presence (it is the article's v1 server)"
# Why the article's server does not support a feature: "the server at X does not support
# edits (it is the article's v1 server)".
V1_SERVER = " (it is the article's v1 server)"


def no_history() -> RemoteError:
    """What History, ListRooms and ListMembers mean on the article's server."""
    return RemoteError("UNIMPLEMENTED", NO_HISTORY)


def require_lobby(room: str, recipient: str = "") -> None:
    """Refuse what the article's server cannot do: another room, a direct message."""
    if room != DEFAULT_ROOM or recipient:
        raise RemoteError("UNIMPLEMENTED", NO_ROOMS)


async def send_over_chat(connection: Connection, request: pb.SendRequest) -> Sent:
    """One message over the article's stream, for servers without Send.

    Half-closing and reading to the end is what proves the server took the message: the
    article's server ends the call only after it has broadcast everything it received.
    """
    connection.legacy_server = True
    require_lobby(request.room, request.recipient)
    message = Message("", DEFAULT_ROOM, request.sender, request.text, datetime.now(UTC), 0)
    # No request iterator: the call is driven with write()/done_writing().
    call = connection.stub.Chat(  # type: ignore[call-arg]
        timeout=connection.config.timeout, metadata=connection.metadata
    )
    try:
        with connection.closed_under("this send"):
            await call.write(codec.to_proto(message))
            await call.done_writing()
            async for _ in call:
                pass
    except grpc.RpcError as error:
        raise connection.error(error) from None
    return Sent(message, duplicate=False)


class LegacyStream:
    """A session's stand-in for `Connect` on the article's server: `name` in the lobby."""

    def __init__(self, connection: Connection, name: str, rooms: Iterable[str]) -> None:
        """Raises UNIMPLEMENTED if the session wants any room but the lobby."""
        for room in rooms:
            require_lobby(room)
        connection.legacy_server = True
        self._connection = connection
        self._name = name
        self._call: aio.StreamStreamCall[pb.ChatMessage, pb.ChatMessage] | None = None
        # One write at a time, in the order asked: gRPC refuses a second write on a stream
        # while one is pending ("Internal error from Core").
        self._writing = asyncio.Lock()

    async def attempt(self) -> AsyncIterator[FeedEvent]:
        """One `Chat` stream: Connected, then the lobby's messages until it ends."""
        connection = self._connection
        config = connection.config
        try:
            await asyncio.wait_for(connection.channel.channel_ready(), config.timeout)
        except TimeoutError:
            raise RemoteError(
                "UNAVAILABLE", f"cannot reach a chat server at {connection.addr}"
            ) from None
        call = connection.stub.Chat(metadata=connection.metadata)  # type: ignore[call-arg]
        self._call = call
        try:
            # The article's server sends no headers until it has something to say, so this
            # is the closest to "registered" the v1 protocol can tell.
            await call.wait_for_connection()
            yield Connected((DEFAULT_ROOM,), legacy=True, addr=connection.addr)
            async for message in call:
                yield codec.from_article_message(message)
        except grpc.RpcError as error:
            raise connection.error(error) from None
        finally:
            self._call = None
            call.cancel()

    async def send(self, text: str, room: str, recipient: str) -> Sent:
        """Write one message to the live stream (there is no other way to post)."""
        call = self._call
        if call is None:
            raise RemoteError("UNAVAILABLE", "not connected; try again in a moment")
        require_lobby(room, recipient)
        message = Message("", DEFAULT_ROOM, self._name, check_text(text), datetime.now(UTC), 0)
        try:
            async with self._writing:
                with self._connection.closed_under("this send"):
                    await call.write(codec.to_proto(message))
        except grpc.RpcError as error:
            raise self._connection.error(error) from None
        return Sent(message, duplicate=False)

    async def aclose(self) -> None:
        """Half-close and give the server a moment to finish, so the last message written is
        not lost."""
        call = self._call
        if call is not None and not call.done():
            try:
                await call.done_writing()
                await asyncio.wait_for(call.code(), timeout=2.0)
            except (grpc.RpcError, TimeoutError):
                pass
            except Exception as error:
                # A call cancelled meanwhile (its reader's task was) fails the half-close with
                # gRPC's own ExecuteBatchError, no RpcError: the stream is gone either way.
                if not type(error).__module__.startswith("grpc."):
                    raise
