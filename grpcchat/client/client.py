"""Async client library: send, read history and presence, and live sessions that reconnect
and resume. The CLI uses nothing else.

Against a grpcchat server a session is one `Connect` stream in any number of rooms, and posts go
through `Send`. Against a server that speaks only the article's `Chat` stream (its Go server)
the same API degrades to that stream: lobby only, no ids, no positions, no history.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, cast

import grpc
from grpc import aio

from grpcchat.client.backoff import Backoff
from grpcchat.client.channel import open_channel
from grpcchat.client.config import ClientConfig
from grpcchat.core.errors import RemoteError
from grpcchat.core.models import (
    DEFAULT_ROOM,
    Event,
    HistoryGap,
    Message,
    Position,
    RequestRefused,
    RoomInfo,
    RoomJoined,
)
from grpcchat.core.validation import check_name, check_room, check_text
from grpcchat.gen.chat.v1 import chat_service_pb2 as pb
from grpcchat.gen.chat.v1 import chat_service_pb2_grpc as pb_grpc
from grpcchat.wire import codec

# Failures a live session rides out by reconnecting; anything else is the caller's to handle.
RETRYABLE = frozenset(
    {"UNAVAILABLE", "RESOURCE_EXHAUSTED", "CANCELLED", "INTERNAL", "UNKNOWN", "DEADLINE_EXCEEDED"}
)


@dataclass(frozen=True, slots=True)
class Connected:
    """The session is live in `rooms`: everything posted there from now on will arrive."""

    rooms: tuple[str, ...]
    legacy: bool  # the server speaks only the article's Chat stream

    @property
    def room(self) -> str:
        return self.rooms[0] if self.rooms else DEFAULT_ROOM


@dataclass(frozen=True, slots=True)
class Reconnecting:
    """The session lost its stream and retries after `delay` seconds."""

    reason: str
    delay: float


@dataclass(frozen=True, slots=True)
class Sent:
    message: Message
    duplicate: bool  # the caller's key had been used before: `message` is the original


FeedEvent = Event | Connected | Reconnecting


_TLS_HINT = (
    "TLS handshake failed? Check --tls-ca, and whether the server needs TLS or a client "
    "certificate (--tls-cert/--tls-key)"
)


def remote_error(error: grpc.RpcError, addr: str) -> RemoteError:
    """Turn a gRPC failure into a RemoteError with a message a person understands."""
    code: grpc.StatusCode = error.code()
    details = error.details() or ""
    lowered = details.lower()
    if code == grpc.StatusCode.UNAVAILABLE and any(
        clue in lowered for clue in ("ssl", "handshake", "socket closed", "settings frame")
    ):
        details = f"cannot reach a chat server at {addr} ({details}). {_TLS_HINT}"
    elif code == grpc.StatusCode.UNAVAILABLE and (
        "failed to connect" in lowered or "dns" in lowered or not details
    ):
        reason = "connection refused" if "refused" in lowered else details or "no response"
        details = f"cannot reach a chat server at {addr} ({reason})"
    elif code == grpc.StatusCode.DEADLINE_EXCEEDED:
        details = f"no answer from {addr} in time"
    elif code == grpc.StatusCode.UNAUTHENTICATED:
        details = f"not authenticated: {details}"
    return RemoteError(code.name, details)


async def _raise_status(call: aio.Call) -> None:
    """Raise the RpcError a finished call ended with (if it failed)."""
    code = await call.code()
    if code != grpc.StatusCode.OK:
        raise aio.AioRpcError(code, aio.Metadata(), aio.Metadata(), await call.details(), "")


def _retry_after(error: grpc.RpcError) -> float | None:
    """The server's hint, in seconds, for when a rate-limited call may be retried."""
    trailing = error.trailing_metadata() if isinstance(error, aio.AioRpcError) else None
    pairs = cast("Iterable[tuple[str, str | bytes]]", trailing or ())
    for key, value in pairs:
        if key == codec.RETRY_AFTER_KEY and isinstance(value, str) and value.isdigit():
            return int(value) / 1000
    return None


class ChatClient:
    """A connection to one chat server. `async with ChatClient(config) as client: ...`"""

    def __init__(self, config: ClientConfig) -> None:
        self.config = config
        self._channel, self._metadata = open_channel(config)
        self._stub = pb_grpc.ChatServiceStub(self._channel)
        # Learned on the first UNIMPLEMENTED: the peer is the article's server.
        self.legacy_server = False

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

    def _error(self, error: grpc.RpcError) -> RemoteError:
        return remote_error(error, self.config.addr)

    # -- sending ----------------------------------------------------------------------------

    async def send(
        self,
        sender: str,
        text: str,
        room: str = "",
        *,
        recipient: str = "",
        action: bool = False,
        key: str = "",
    ) -> Sent:
        """Post one message and return it as the server accepted it (id, position, time).

        Retries transient failures (unreachable, timeouts, rate limits) until the client's
        timeout, always with the same idempotency key, so a retry never posts twice.
        `duplicate` is true only for a `key` the caller chose that had been used before: with
        a key of this call's making, a duplicate answer means this call's own earlier attempt
        got through (its answer was lost), so the message was posted by this call.
        """
        own_key = not key
        request = pb.SendRequest(
            sender=check_name(sender),
            text=check_text(text),
            room=check_room(room),
            key=key or uuid.uuid4().hex,
            recipient=check_name(recipient) if recipient else "",
            action=action,
        )
        deadline = time.monotonic() + self.config.timeout
        backoff = Backoff(initial=0.1, maximum=2.0)
        while True:
            remaining = deadline - time.monotonic()
            try:
                response: pb.SendResponse = await self._stub.Send(
                    request,
                    timeout=max(0.05, min(remaining, max(1.0, self.config.timeout / 3))),
                    metadata=self._metadata,
                )
                duplicate = response.duplicate and not own_key
                return Sent(codec.from_proto(response.message), duplicate)
            except grpc.RpcError as error:
                code = error.code()
                if code == grpc.StatusCode.UNIMPLEMENTED:
                    return await self._send_over_chat(request)
                if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    delay = _retry_after(error)
                    if delay is None:
                        raise self._error(error) from None
                elif code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    delay = backoff.next_delay()
                else:
                    raise self._error(error) from None
                if time.monotonic() + delay >= deadline:
                    raise self._error(error) from None
                await asyncio.sleep(delay)

    async def _send_over_chat(self, request: pb.SendRequest) -> Sent:
        """One message over the article's stream, for servers without Send.

        Half-closing and reading to the end is what proves the server took the message: the
        article's server ends the call only after it has broadcast everything it received.
        """
        self.legacy_server = True
        if request.room != DEFAULT_ROOM or request.recipient:
            raise RemoteError("UNIMPLEMENTED", _NO_ROOMS)
        message = Message("", DEFAULT_ROOM, request.sender, request.text, datetime.now(UTC), 0)
        # No request iterator: the call is driven with write()/done_writing().
        call = self._stub.Chat(timeout=self.config.timeout, metadata=self._metadata)  # type: ignore[call-arg]
        try:
            await call.write(codec.to_proto(message))
            await call.done_writing()
            async for _ in call:
                pass
        except grpc.RpcError as error:
            raise self._error(error) from None
        return Sent(message, duplicate=False)

    # -- reading ----------------------------------------------------------------------------

    async def history(
        self,
        room: str = "",
        *,
        limit: int = 50,
        before: int = 0,
        after: int = 0,
        newest_first: bool = False,
    ) -> list[Message]:
        request = pb.HistoryRequest(
            room=check_room(room),
            limit=limit,
            before_seq=before,
            after_seq=after,
            newest_first=newest_first,
        )
        async with self._calling():
            response = await self._stub.History(request, **self._call_options())
        return [codec.from_proto(m) for m in response.messages]

    async def rooms(self) -> list[RoomInfo]:
        async with self._calling():
            response = await self._stub.ListRooms(pb.ListRoomsRequest(), **self._call_options())
        return [RoomInfo(r.name, r.members, r.messages) for r in response.rooms]

    async def members(self, room: str = "") -> list[str]:
        request = pb.ListMembersRequest(room=check_room(room))
        async with self._calling():
            response = await self._stub.ListMembers(request, **self._call_options())
        return list(response.members)

    def _call_options(self) -> dict[str, Any]:
        return {"timeout": self.config.timeout, "metadata": self._metadata}

    @asynccontextmanager
    async def _calling(self) -> AsyncIterator[None]:
        """Turn a failed call into a RemoteError (UNIMPLEMENTED: the article's server)."""
        try:
            yield
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.UNIMPLEMENTED:
                raise RemoteError("UNIMPLEMENTED", _NO_HISTORY) from None
            raise self._error(error) from None

    def session(
        self, name: str, rooms: str | Sequence[str] = (DEFAULT_ROOM,), *, history: int = 0
    ) -> ChatSession:
        """A live session as `name` in `rooms`, replaying up to `history` recent messages of
        each room on first join."""
        wanted = [rooms] if isinstance(rooms, str) else list(rooms)
        return ChatSession(self, check_name(name), [check_room(r) for r in wanted], history)


# Reconnect attempts (with backoff up to 5 s) before a room whose rejoin keeps being refused
# is given up.
MAX_REJOIN_ATTEMPTS = 10
_NO_ROOMS = "this server has no rooms or direct messages; only the default room 'lobby' works"
_NO_HISTORY = "this server keeps no history and has no presence (it is the article's v1 server)"


class ChatSession:
    """One user in some rooms: `events()` yields what happens, `send()` posts.

    The session remembers the last position it saw in each room; after a lost stream it
    reconnects with jittered backoff and resumes each room from there, so nothing is missed
    and nothing is shown twice.
    """

    def __init__(self, client: ChatClient, name: str, rooms: Iterable[str], history: int):
        self.client = client
        self.name = name
        self.rooms: list[str] = list(dict.fromkeys(rooms))
        self.history = history
        self.positions: dict[str, Position] = {}
        self.legacy = False
        self._requests: asyncio.Queue[pb.ConnectRequest | None] | None = None
        self._legacy_call: aio.StreamStreamCall[pb.ChatMessage, pb.ChatMessage] | None = None
        self._closed = False
        self._rejoin_refusals: Counter[str] = Counter()

    async def events(self) -> AsyncIterator[FeedEvent]:
        """Events of the session's rooms, with Connected/Reconnecting in between, until
        `aclose()`. The first connection must succeed (else RemoteError); after that, lost
        streams are retried and only non-retryable failures are raised."""
        backoff = Backoff()
        connected_once = False
        while not self._closed:
            try:
                async for event in self._attempt(first=not connected_once):
                    if isinstance(event, Connected):
                        connected_once = True
                        backoff.reset()
                    yield event
                reason = "the server ended the stream"
            except RemoteError as error:
                if not connected_once or error.status not in RETRYABLE:
                    raise
                reason = str(error)
            if self._closed:
                return
            delay = backoff.next_delay()
            yield Reconnecting(reason, delay)
            await asyncio.sleep(delay)

    def _join_request(self, room: str) -> pb.ConnectRequest:
        position = self.positions.get(room)
        join = pb.JoinRoom(room=room, history=self.history)
        if position is not None:
            join.after.CopyFrom(codec.position_to_proto(position))
        return pb.ConnectRequest(join=join)

    async def _attempt(self, first: bool) -> AsyncIterator[FeedEvent]:
        if self.legacy:
            async for event in self._attempt_legacy():
                yield event
            return
        requests: asyncio.Queue[pb.ConnectRequest | None] = asyncio.Queue()
        waiting = set(self.rooms)

        async def outgoing() -> AsyncIterator[pb.ConnectRequest]:
            while (request := await requests.get()) is not None:
                yield request

        call = self.client._stub.Connect(outgoing(), metadata=self.client._metadata)
        try:
            # Nothing is written before the server's headers: a server without Connect (the
            # article's) must be able to answer UNIMPLEMENTED without our writes racing it.
            await call.initial_metadata()
            if call.done():
                await _raise_status(call)
            requests.put_nowait(pb.ConnectRequest(hello=pb.Hello(name=self.name)))
            for room in self.rooms:
                requests.put_nowait(self._join_request(room))
            self._requests = requests
            if not waiting:
                yield Connected((), legacy=False)
            async for response in call:
                for item in response.events:
                    decoded = codec.event_from_proto(item)
                    if decoded is None or not self._track(decoded):
                        continue
                    if isinstance(decoded, RequestRefused):
                        self._check_refusal(decoded, decoded.room in waiting, first)
                    yield decoded
                    if isinstance(decoded, RoomJoined | RequestRefused) and decoded.room in waiting:
                        waiting.discard(decoded.room)
                        if not waiting:
                            yield Connected(tuple(self.rooms), legacy=False)
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.UNIMPLEMENTED:
                raise self.client._error(error) from None
            if any(room != DEFAULT_ROOM for room in self.rooms):
                raise RemoteError("UNIMPLEMENTED", _NO_ROOMS) from None
            self.legacy = self.client.legacy_server = True
        finally:
            self._requests = None
            requests.put_nowait(None)  # lets gRPC's request-consuming task finish
            call.cancel()
        if self.legacy:
            async for event in self._attempt_legacy():
                yield event

    def _check_refusal(self, refused: RequestRefused, initial: bool, first: bool) -> None:
        """Raise for refusals that end this attempt: the session itself (room ""), a room of the
        first connection (the user asked for it and must hear why), or a rejoin refused
        because the server has not yet noticed our previous stream (name still taken).
        Otherwise forget the room."""
        if refused.room == "" or (initial and first):
            raise RemoteError(refused.code, refused.reason)
        if initial and refused.code in ("ALREADY_EXISTS", "UNAVAILABLE"):
            # The server notices a dead stream within its keepalive (~40 s); about as long as
            # these retries take. Past that the name is someone else's: give the room up.
            self._rejoin_refusals[refused.room] += 1
            if self._rejoin_refusals[refused.room] < MAX_REJOIN_ATTEMPTS:
                raise RemoteError("UNAVAILABLE", f"rejoining #{refused.room}: {refused.reason}")
        # Any other refusal is final: the session is not in that room, so it stops asking
        # (and a later reconnect does not ask again).
        if refused.room in self.rooms:
            self.rooms.remove(refused.room)
        self.positions.pop(refused.room, None)

    def _track(self, event: Event) -> bool:
        """Remember positions; False for a message already seen (never shown twice)."""
        if isinstance(event, Message) and event.seq and event.room:
            seen = self.positions.get(event.room)
            if seen is not None and seen.epoch == event.epoch and event.seq <= seen.seq:
                return False
            self.positions[event.room] = event.position
        elif isinstance(event, RoomJoined):
            self._rejoin_refusals.pop(event.room, None)
            seen = self.positions.get(event.room)
            if seen is None or seen.epoch != event.position.epoch or seen.seq < event.position.seq:
                self.positions[event.room] = event.position
        elif isinstance(event, HistoryGap) and event.first_seq == 0:
            self.positions.pop(event.room, None)
        return True

    async def _attempt_legacy(self) -> AsyncIterator[FeedEvent]:
        config = self.client.config
        try:
            await asyncio.wait_for(self.client._channel.channel_ready(), config.timeout)
        except TimeoutError:
            raise RemoteError(
                "UNAVAILABLE", f"cannot reach a chat server at {config.addr}"
            ) from None
        call = self.client._stub.Chat(metadata=self.client._metadata)  # type: ignore[call-arg]
        self._legacy_call = call
        try:
            # The article's server sends no headers until it has something to say, so this
            # is the closest to "registered" the v1 protocol can tell.
            await call.wait_for_connection()
            yield Connected((DEFAULT_ROOM,), legacy=True)
            async for message in call:
                yield codec.from_proto(message, DEFAULT_ROOM)
        except grpc.RpcError as error:
            raise self.client._error(error) from None
        finally:
            self._legacy_call = None
            call.cancel()

    async def join(self, room: str) -> None:
        """Enter another room; its RoomJoined (or RequestRefused) event follows."""
        room = check_room(room)
        if self.legacy and room != DEFAULT_ROOM:
            raise RemoteError("UNIMPLEMENTED", _NO_ROOMS)
        if room not in self.rooms:
            self.rooms.append(room)
            if self._requests is not None:
                self._requests.put_nowait(self._join_request(room))

    async def leave(self, room: str) -> None:
        room = check_room(room)
        if room in self.rooms:
            self.rooms.remove(room)
            self.positions.pop(room, None)
            if self._requests is not None:
                self._requests.put_nowait(pb.ConnectRequest(leave=pb.LeaveRoom(room=room)))

    async def send(
        self, text: str, room: str = "", *, recipient: str = "", action: bool = False
    ) -> Sent:
        """Post as this session's user, to `room` (default: the session's first room)."""
        room = room or (self.rooms[0] if self.rooms else DEFAULT_ROOM)
        if not self.legacy:
            return await self.client.send(self.name, text, room, recipient=recipient, action=action)
        call = self._legacy_call
        if call is None:
            raise RemoteError("UNAVAILABLE", "not connected; try again in a moment")
        if room != DEFAULT_ROOM or recipient:
            raise RemoteError("UNIMPLEMENTED", _NO_ROOMS)
        message = Message("", DEFAULT_ROOM, self.name, check_text(text), datetime.now(UTC), 0)
        try:
            await call.write(codec.to_proto(message))
        except grpc.RpcError as error:
            raise self.client._error(error) from None
        return Sent(message, duplicate=False)

    async def aclose(self) -> None:
        """Leave for good. On the article's stream, half-close and give the server a moment
        to finish, so the last message written is not lost."""
        self._closed = True
        if self._requests is not None:
            self._requests.put_nowait(None)
        call = self._legacy_call
        if call is not None and not call.done():
            try:
                await call.done_writing()
                await asyncio.wait_for(call.code(), timeout=2.0)
            except (grpc.RpcError, TimeoutError):
                pass


__all__ = [
    "ChatClient",
    "ChatSession",
    "Connected",
    "FeedEvent",
    "Reconnecting",
    "Sent",
]
