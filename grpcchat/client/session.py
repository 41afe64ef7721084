"""A live session: one `Connect` stream in any number of rooms that reconnects with jittered
backoff and resumes each room from the last position it saw. Against the article's server,
which has no `Connect`, the session hands over to `grpcchat.client.legacy`."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator, Iterable
from typing import TYPE_CHECKING

import grpc

from grpcchat.client.backoff import Backoff
from grpcchat.client.errors import RETRYABLE, ClientClosed, raise_status
from grpcchat.client.events import Connected, FeedEvent, Reconnecting, Sent
from grpcchat.client.legacy import V1_SERVER, LegacyStream, require_lobby
from grpcchat.client.outbox import Outbox
from grpcchat.client.packing import packed_requests
from grpcchat.client.posts import check_accepted, feature, send_request, unsupported
from grpcchat.core.errors import ChatError, NoAnswer, RemoteError
from grpcchat.core.models import (
    DEFAULT_ROOM,
    Event,
    HistoryGap,
    Message,
    Position,
    Relation,
    RequestRefused,
    RoomJoined,
    SendAck,
)
from grpcchat.core.validation import check_room, check_uint
from grpcchat.gen.chat.v1 import chat_service_pb2 as pb
from grpcchat.wire import codec

if TYPE_CHECKING:
    from grpcchat.client.client import ChatClient

# Responses read ahead of a program that reads `events()` (see `_read_ahead`): a server writes a
# batch of events a response, so this is hundreds of events; past it, the stream waits for the
# program, and HTTP/2 flow control holds the server back.
READ_AHEAD = 16
# A stream connected at least this long (seconds) was no failure: the reconnect delays start over.
STABLE_AFTER = 2.0
# Reconnect attempts (with backoff up to 5 s) before a room whose rejoin keeps being refused
# is given up.
MAX_REJOIN_ATTEMPTS = 10


class ChatSession:
    """One user in some rooms: `events()` yields what happens, `send()` posts.

    The session remembers the last position it saw in each room; after a lost stream it
    reconnects with jittered backoff and resumes each room from there, so nothing is missed
    and nothing is shown twice.
    """

    def __init__(
        self,
        client: ChatClient,
        name: str,
        rooms: Iterable[str],
        history: int,
        *,
        patient: bool = False,
    ):
        self.client = client
        # Whether a first connection that fails is retried like a lost one (`send` reading a
        # pipe: its caller bounds the wait) rather than raised at once (`join`: "unreachable").
        self._patient = patient
        self.name = name
        self._rooms: list[str] = list(dict.fromkeys(rooms))
        self.history = history
        self.positions: dict[str, Position] = {}
        self._connection = client.connection
        self._requests: asyncio.Queue[pb.ConnectRequest | None] | None = None
        # Set once the server turns out to be the article's: the session is then that stream.
        self._legacy: LegacyStream | None = None
        self._closed = False
        self._rejoin_refusals: Counter[str] = Counter()
        # Messages sent on the stream, waiting for their ack (written again after a reconnect).
        self._outbox = Outbox()
        # Whether events() is running: only then does a stream carry sends.
        self._streaming = False
        # Rooms joined after the stream opened whose RoomJoined (or refusal) has not come yet:
        # a refusal for any other room (a typing notice, a read marker) leaves the room be.
        self._joining: set[str] = set()
        # Rooms this stream has joined (RoomJoined came): typing notices and read markers on the
        # stream name only these.
        self._joined: set[str] = set()
        # Why the last stream ended, while the session reconnects: a send that times out
        # meanwhile says it, rather than only that no answer came.
        self._lost_because = ""
        # The status of why the stream was lost: what a send that times out meanwhile ends with.
        self._lost_status = "UNAVAILABLE"
        # The error that ended the last attempt, if one did (a server that could not be reached
        # says so in its type: see `probe.explain`).
        self._lost_error: RemoteError | None = None

    def not_connected(self, waited: float) -> RemoteError:
        """Why the session is not connected after `waited` seconds: the last attempt's
        failure, or that nothing answered."""
        if self._lost_error is not None:
            return self._lost_error
        if self._lost_because:
            return RemoteError(self._lost_status, self._lost_because)
        return self._silent(waited)

    def _silent(self, waited: float) -> RemoteError:
        return RemoteError(
            "DEADLINE_EXCEEDED", f"no answer from {self._connection.addr} within {waited:g}s"
        )

    def _refuse_if_closed(self) -> None:
        if self._closed:
            raise ClientClosed("this session was closed: open another with client.session()")

    @property
    def rooms(self) -> tuple[str, ...]:
        """The rooms the session is in or joining, in the order they were asked for: `join()`
        and `leave()` change them, and a room whose join was refused is given up."""
        return tuple(self._rooms)

    @property
    def legacy(self) -> bool:
        """The server speaks only the article's Chat stream."""
        return self._legacy is not None

    async def events(self) -> AsyncGenerator[FeedEvent, None]:
        """Events of the session's rooms, with Connected/Reconnecting in between, until
        `aclose()`. The first connection must succeed (else RemoteError); after that, lost
        streams are retried and only non-retryable failures are raised. One at a time: a
        session is one stream (ChatError for a second, or after `aclose()`)."""
        if self._streaming:
            # (A loop left with break or return does not end the generator until it is closed:
            # Python finalizes async generators late.)
            raise ChatError(
                "this session's events() is already running: a session is one stream (a loop "
                "that left it early must close it first: `async with contextlib.aclosing(...)`)"
            )
        self._refuse_if_closed()
        self._streaming = True
        try:
            with self._connection.closed_under("this session"):
                async for event in self._reconnecting(Backoff()):
                    yield event
        except RemoteError as error:
            self._outbox.fail_all(error)  # the sends waiting end as the session did
            raise
        finally:
            self._streaming = False
            self._outbox.fail_all(RemoteError("CANCELLED", "the session ended before an answer"))

    async def _reconnecting(self, backoff: Backoff) -> AsyncIterator[FeedEvent]:
        connected_once = False
        # Before the first connection, each other address may be tried once.
        spare = len(self._connection.addrs) - 1
        loop = asyncio.get_running_loop()
        while not self._closed:
            connected_at: float | None = None
            try:
                async for event in self._attempt(first=not connected_once):
                    if isinstance(event, Connected):
                        connected_once = True
                        connected_at = loop.time()
                        self._lost_because, self._lost_error = "", None
                    yield event
                reason, status = "the server ended the stream", "UNAVAILABLE"
                self._lost_error = None
            except RemoteError as error:
                given_up = not connected_once and spare <= 0 and not self._patient
                if error.status not in RETRYABLE or given_up:
                    raise
                if not connected_once:
                    spare -= 1
                reason, status = str(error), error.status
                self._lost_error = error
            if self._closed:
                return
            self._lost_because, self._lost_status = reason, status
            # The delays start over only after a stream that lasted: one the server ends at
            # once each time (its history failing every send) was retried every 0.1-0.2 s.
            if connected_at is not None and loop.time() - connected_at >= STABLE_AFTER:
                backoff.reset()
            delay = backoff.next_delay()
            # A lost stream moves on to the next address (round-robin), resuming there.
            addr = self._connection.next_address()
            yield Reconnecting(reason, delay, addr)
            await asyncio.sleep(delay)

    async def _attempt(self, first: bool) -> AsyncIterator[FeedEvent]:
        if self._legacy is None:
            async for event in self._connect(first):
                yield event
        if self._legacy is not None:  # set by this attempt, or an earlier one
            async for event in self._legacy.attempt():
                yield event

    def _join_request(self, room: str) -> pb.ConnectRequest:
        position = self.positions.get(room)
        join = pb.JoinRoom(room=room, history=self.history)
        if position is not None:
            join.after.CopyFrom(codec.position_to_proto(position))
        return pb.ConnectRequest(join=join)

    async def _headers(
        self, call: grpc.aio.StreamStreamCall[pb.ConnectRequest, pb.ConnectResponse]
    ) -> grpc.aio.Metadata:
        """The stream's headers, within --timeout shared among the addresses: a server that
        takes the call and never answers (not even its headers) must not hold a session, or
        the other addresses, for good."""
        wait = self._connection.config.timeout / len(self._connection.addrs)
        try:
            async with asyncio.timeout(wait):
                return await call.initial_metadata()
        except TimeoutError:
            call.cancel()
            raise self._silent(wait) from None

    async def _connect(self, first: bool) -> AsyncIterator[FeedEvent]:
        """One `Connect` stream, until it ends. A server without `Connect` leaves the session
        on the article's stream instead (`self._legacy`)."""
        requests: asyncio.Queue[pb.ConnectRequest | None] = asyncio.Queue()
        waiting = set(self.rooms)
        unimplemented = False
        packs = False  # whether the server reads packed sends: its headers say

        call = self._connection.stub.Connect(
            packed_requests(requests, lambda: packs), metadata=self._connection.metadata
        )
        try:
            # Nothing is written before the server's headers: a server without Connect (the
            # article's) must be able to answer UNIMPLEMENTED without our writes racing it.
            packs = codec.reads_packed_sends(await self._headers(call))
            if call.done():
                await raise_status(call)
            if self._closed:  # aclose() came while the stream was opening: nothing to say
                return
            requests.put_nowait(pb.ConnectRequest(hello=pb.Hello(name=self.name)))
            for room in self.rooms:
                requests.put_nowait(self._join_request(room))
            # Sends still unanswered when the last stream was lost go out again, same keys.
            for request in self._outbox.unanswered():
                requests.put_nowait(request)
            self._requests = requests
            # A session of no rooms is connected at once, but only once its responses are read:
            # its program may await a send's answer as soon as it has Connected.
            opening = None if waiting else Connected((), legacy=False, addr=self._connection.addr)
            async for decoded in self._read_ahead(call, opening):
                if isinstance(decoded, Connected):
                    yield decoded
                    continue
                if not self._track(decoded):
                    continue
                if isinstance(decoded, RequestRefused):
                    self._check_refusal(decoded, decoded.room in waiting, first)
                yield decoded
                if isinstance(decoded, RoomJoined | RequestRefused):
                    self._joining.discard(decoded.room)
                if isinstance(decoded, RoomJoined):
                    self._joined.add(decoded.room)
                if isinstance(decoded, RoomJoined | RequestRefused) and decoded.room in waiting:
                    waiting.discard(decoded.room)
                    if not waiting:
                        yield Connected(self.rooms, legacy=False, addr=self._connection.addr)
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.UNIMPLEMENTED:
                raise self._connection.error(error) from None
            unimplemented = True
        finally:
            self._requests = None
            self._joined.clear()
            requests.put_nowait(None)  # lets gRPC's request-consuming task finish
            call.cancel()
        if unimplemented:
            self._legacy = LegacyStream(self._connection, self.name, self.rooms)

    async def _read_ahead(
        self,
        call: grpc.aio.StreamStreamCall[pb.ConnectRequest, pb.ConnectResponse],
        opening: Connected | None = None,
    ) -> AsyncIterator[Event | Connected]:
        """The stream's events, read by a task of their own up to READ_AHEAD responses ahead of
        the caller, which answers each `SendAck` as it arrives: a program that awaits a
        `send()` in the loop that reads `events()` (a bot answering a message) gets its answer,
        instead of waiting for one that only its own loop would read. `opening` comes first,
        once that task is started (it runs while the caller awaits anything)."""
        # Unbounded as a queue, so the pump can always leave its last word; bounded by the pump,
        # which waits for room before reading on.
        ahead: asyncio.Queue[list[Event] | BaseException | None] = asyncio.Queue()
        room_ahead = asyncio.Event()

        async def pump() -> None:
            try:
                async for response in call:
                    events: list[Event] = []
                    try:
                        for item in response.events:
                            decoded = codec.event_from_proto(item)
                            if isinstance(decoded, SendAck):
                                self._outbox.answer(decoded)
                            elif decoded is not None:
                                events.append(decoded)
                    finally:  # (what came before an event that cannot be read is delivered)
                        if events:
                            ahead.put_nowait(events)
                    while ahead.qsize() >= READ_AHEAD:
                        room_ahead.clear()
                        await room_ahead.wait()
                ahead.put_nowait(None)
            except BaseException as error:
                # Raised where the caller reads: gRPC's failures, and the CancelledError of a
                # call whose channel was closed under it (events() tells that one apart).
                ahead.put_nowait(error)
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise  # cancelled by the reader, which is gone

        reader = asyncio.create_task(pump())
        try:
            if opening is not None:
                yield opening
            while (events := await ahead.get()) is not None:
                room_ahead.set()
                if isinstance(events, BaseException):
                    raise events
                for event in events:
                    yield event
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader

    def _check_refusal(self, refused: RequestRefused, initial: bool, first: bool) -> None:
        """Raise for refusals that end this attempt: the session itself (room ""), a room of the
        first connection (the user asked for it and must hear why), or a rejoin refused
        because the server has not yet noticed our previous stream (name still taken).
        Otherwise forget the room, if it was a join that was refused (a refused typing notice
        or read marker leaves the session in the room)."""
        if refused.room == "" or (initial and first):
            raise RemoteError(refused.code, refused.reason)
        if not initial and refused.room not in self._joining:
            return
        if initial and refused.code in ("ALREADY_EXISTS", "UNAVAILABLE", "RESOURCE_EXHAUSTED"):
            # The server notices a dead stream within its keepalive (~40 s); about as long as
            # these retries take. Past that the name is someone else's: give the room up. A
            # rejoin over the request rate (many clients of one address reconnecting after a
            # drain) waits for the bucket the same way.
            self._rejoin_refusals[refused.room] += 1
            if self._rejoin_refusals[refused.room] < MAX_REJOIN_ATTEMPTS:
                raise RemoteError("UNAVAILABLE", f"rejoining #{refused.room}: {refused.reason}")
        # Any other refusal is final: the session is not in that room, so it stops asking
        # (and a later reconnect does not ask again).
        if refused.room in self._rooms:
            self._rooms.remove(refused.room)
        self._joined.discard(refused.room)
        self.positions.pop(refused.room, None)

    def _track(self, event: Event) -> bool:
        """Remember positions; False for a message already seen (never shown twice). A message
        that skips seqs means some never arrived: the attempt ends (a retryable error) and the
        reconnect resumes from the last position seen, so nothing is lost silently."""
        if isinstance(event, Message) and event.seq and event.room:
            seen = self.positions.get(event.room)
            if seen is not None and seen.epoch == event.epoch:
                if event.seq <= seen.seq:
                    return False
                if event.seq > seen.seq + 1:
                    raise RemoteError(
                        "UNAVAILABLE",
                        f"messages {seen.seq + 1}-{event.seq - 1} of #{event.room} did not "
                        "arrive; resuming",
                    )
            self.positions[event.room] = event.position
        elif isinstance(event, RoomJoined):
            self._rejoin_refusals.pop(event.room, None)
            seen = self.positions.get(event.room)
            if seen is None or seen.epoch != event.position.epoch or seen.seq < event.position.seq:
                self.positions[event.room] = event.position
        elif isinstance(event, HistoryGap):
            seen = self.positions.get(event.room)
            if event.first_seq == 0 or seen is None:
                self.positions.pop(event.room, None)
            else:  # what the gap names is gone for good: continue after it
                self.positions[event.room] = Position(max(seen.seq, event.last_seq), seen.epoch)
        return True

    async def join(self, room: str) -> None:
        """Enter another room; its RoomJoined (or RequestRefused) event follows."""
        self._refuse_if_closed()
        room = check_room(room)
        if self._legacy is not None:
            require_lobby(room)
        if room not in self._rooms:
            self._rooms.append(room)
            if self._requests is not None:
                self._joining.add(room)
                self._requests.put_nowait(self._join_request(room))

    async def leave(self, room: str) -> None:
        self._refuse_if_closed()
        room = check_room(room)
        if room in self._rooms:
            self._rooms.remove(room)
            self.positions.pop(room, None)
            self._joining.discard(room)
            self._joined.discard(room)
            if self._requests is not None:
                self._requests.put_nowait(pb.ConnectRequest(leave=pb.LeaveRoom(room=room)))

    async def send(
        self,
        text: str,
        room: str = "",
        *,
        recipient: str = "",
        action: bool = False,
        reply_to: str = "",
        relation: Relation | None = None,
    ) -> Sent:
        """Post as this session's user, to `room` (default: the session's first room), and
        return the message as accepted. `reply_to` and `relation` as for `ChatClient.send`
        (a reply; an edit, delete or reaction of an earlier message).

        While `events()` runs, the message goes on the session's own stream: many sends may
        be in flight at once, each answered on the stream (read ahead of the loop over
        `events()`, so a send may be awaited inside that loop, and may return before that
        loop has seen the events that came before its answer), and one unanswered when the
        stream is lost is written again (same key) once it is back. Otherwise it is a unary
        `Send`.
        Either way rate limits, and a history the server cannot reach for a moment (NATS: the
        stream ends, and the send is written again on the next), are waited out until the
        client's timeout, with the same key. A closed session sends nothing (ClientClosed)."""
        self._refuse_if_closed()
        room = room or (self.rooms[0] if self.rooms else DEFAULT_ROOM)
        request = send_request(
            self.name,
            text,
            room,
            recipient=recipient,
            action=action,
            reply_to=reply_to,
            relation=relation,
        )
        if self._legacy is not None:
            if (what := feature(request)) is not None:
                raise unsupported(what, self._connection.addr, V1_SERVER)
            return await self._legacy.send(text, room, recipient)
        if not self._streaming:
            return await self.client.send(
                self.name,
                text,
                room,
                recipient=recipient,
                action=action,
                reply_to=reply_to,
                relation=relation,
            )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.client.config.timeout
        framed, answer = self._outbox.add(request)
        refused = ""  # why the last answer refused it for now, if one did
        try:
            while True:
                # (Answered already: written again on a new stream while waiting out a refusal.)
                if self._requests is not None and not answer.done():
                    self._requests.put_nowait(framed)
                try:
                    ack = await asyncio.wait_for(answer, max(0.0, deadline - loop.time()))
                except TimeoutError:
                    # While reconnecting, the reason is why there was no answer (a server down
                    # is UNAVAILABLE, as for a unary send), not the deadline.
                    status, lost = "DEADLINE_EXCEEDED", ""
                    if self._lost_because:
                        status, lost = self._lost_status, f" (reconnecting: {self._lost_because})"
                    elif refused:  # written again after a refusal, and then time ran out
                        lost = f" (written again after: {refused})"
                    raise NoAnswer(
                        status, f"no answer from {self._connection.addr} in time{lost}"
                    ) from None
                if not ack.code and ack.message is not None:
                    # The key is this call's own: a duplicate is its own earlier write,
                    # answered after a reconnect, so the message was posted by this call.
                    message = check_accepted(request, ack.message, self._connection.addr)
                    return Sent(message, duplicate=False)
                retry = ack.retry_after
                if ack.code != "RESOURCE_EXHAUSTED" or retry is None:
                    raise RemoteError(ack.code or "UNKNOWN", ack.reason)
                if loop.time() + retry >= deadline:
                    raise RemoteError(ack.code, ack.reason)
                if request.key not in self._outbox:  # the session ended meanwhile
                    raise RemoteError("CANCELLED", "the session ended before an answer")
                answer = self._outbox.again(request.key)  # kept in its place meanwhile
                refused = ack.reason
                await asyncio.sleep(retry)
        finally:
            self._outbox.settle(request.key)

    async def typing(self, room: str, active: bool) -> None:
        """Tell `room`'s other members this user is typing (`active`) or stopped. A notice
        expires on its own after a few seconds, so a typist refreshes it (every 3 s or so).
        Ephemeral: while the stream is down, or the room's join is not complete, it is dropped."""
        self._refuse_if_closed()
        room = check_room(room)
        if self._legacy is not None:
            raise unsupported("typing notices", self._connection.addr, V1_SERVER)
        if self._requests is not None and room in self._joined:
            typing = pb.TypingRequest(room=room, active=active)
            self._requests.put_nowait(pb.ConnectRequest(typing=typing))

    async def mark_read(self, room: str, seq: int) -> None:
        """Move this user's read marker in `room` forward to `seq` (everything up to it has been
        read); the user's other sessions are told. On the stream while it is in the room, else
        a unary `MarkRead`."""
        self._refuse_if_closed()
        room = check_room(room)
        seq = check_uint(seq, "seq")
        if self._legacy is not None:
            raise unsupported("read markers", self._connection.addr, V1_SERVER)
        if self._requests is not None and room in self._joined:
            marker = pb.MarkReadRequest(room=room, seq=seq)
            self._requests.put_nowait(pb.ConnectRequest(mark_read=marker))
        else:
            await self.client.mark_read(room, seq, self.name)

    async def aclose(self) -> None:
        """Leave for good (on the article's stream, without losing the last message)."""
        self._closed = True
        if self._requests is not None:
            self._requests.put_nowait(None)
        self._outbox.fail_all(RemoteError("CANCELLED", "the session was closed"))
        if self._legacy is not None:
            await self._legacy.aclose()
