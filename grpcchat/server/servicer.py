"""The gRPC servicer: each handler authenticates the caller, translates protobuf <-> domain and
makes one call into the hub; `status` turns the hub's errors into status codes, `framing` turns
queued events into responses.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Iterable, Sequence
from datetime import UTC, datetime

import grpc

from grpcchat.core.errors import (
    ChatError,
    InvalidInput,
    LimitExceeded,
    NotFound,
    ServerDraining,
    StoreError,
    TimedOut,
    Unauthenticated,
)
from grpcchat.core.hub import Hub
from grpcchat.core.ids import new_message_id
from grpcchat.core.models import (
    DEFAULT_ROOM,
    Envelope,
    Message,
    Relation,
    RequestRefused,
    SendAck,
)
from grpcchat.core.session import Session
from grpcchat.core.validation import check_name, check_room, check_text
from grpcchat.gen.chat.v1 import chat_service_pb2 as pb
from grpcchat.server.auth import Identity, TokenAuthority
from grpcchat.server.chatlog import log_accepted
from grpcchat.server.counters import ServerStats
from grpcchat.server.framing import each_chat_message, frame_events
from grpcchat.server.inflight import Hold, InFlight, WaitingLine, in_flight_limit
from grpcchat.server.peers import grpc_peer
from grpcchat.server.status import Context, maps_errors, status_of
from grpcchat.server.writer import write_session
from grpcchat.wire import codec

# How long a session may take to say hello.
HELLO_TIMEOUT = 10.0
# How long a refused stream waits for its client to hang up before the call is ended.
REFUSAL_GRACE = 2.0


log = logging.getLogger("grpcchat.server.servicer")


class ChatServicer:
    """Implements chat.v1.ChatService on top of the hub."""

    def __init__(
        self,
        hub: Hub,
        auth: TokenAuthority | None = None,
        stats: ServerStats | None = None,
        *,
        heartbeat: float = 0,
    ) -> None:
        self._hub = hub
        self._auth = auth
        # Seconds a session stream (Connect, Subscribe) may stay quiet before it gets an empty
        # response; 0: never. The article's Chat stream can carry only ChatMessages: none.
        self._heartbeat = heartbeat
        self.stats = stats or ServerStats()

    def _refused(self, error: ChatError) -> str:
        """Count a refused message under its status code; the code's name."""
        code = status_of(error).name
        self.stats.refuse(code)
        return code

    @property
    def heartbeat(self) -> float:
        return self._heartbeat

    def identify(self, authorization: Sequence[str]) -> Identity | None:
        """The verified identity in a call's `authorization` headers (one, `Bearer <token>`)
        with auth on; None with auth off. Shared by every protocol adapter (gRPC here,
        `grpcchat.web`). Two are refused: the gRPC port took the last and the web port the
        first, so one request was two users."""
        if self._auth is None:
            return None
        if len(authorization) > 1:
            raise Unauthenticated(
                f"a call carries one authorization header, not {len(authorization)}"
            )
        return self._auth.verify_header(authorization[0] if authorization else None)

    def _identify(self, context: Context) -> Identity | None:
        """The caller's verified identity with auth on; None with auth off."""
        if self._auth is None:
            return None
        metadata = context.invocation_metadata() or ()
        return self.identify(
            [v for k, v in metadata if k == "authorization" and isinstance(v, str)]
        )

    async def _post(
        self,
        request: pb.SendRequest,
        identity: Identity | None,
        principal: str,
        *,
        shielded: bool = True,
    ) -> pb.SendResponse:
        # With auth on the token says who is speaking; the request's sender is ignored.
        sender = identity.name if identity else request.sender
        appended = await self._hub.post(
            sender,
            request.text,
            room=request.room,
            key=request.key,
            recipient=request.recipient,
            action=request.action,
            principal=principal,
            reply_to=request.reply_to,
            relation=_relation_of(request),
            shielded=shielded,
        )
        if not appended.duplicate:
            log_accepted(appended.message)
        return pb.SendResponse(
            message=codec.to_proto(appended.message), duplicate=appended.duplicate
        )

    # -- protocol-neutral calls: the gRPC handlers below and `grpcchat.web` share them ----------

    async def send(
        self, request: pb.SendRequest, identity: Identity | None, peer: str
    ) -> pb.SendResponse:
        """Post one message; a refusal is counted under its status code and raised."""
        try:
            return await self._post(request, identity, principal(identity, peer))
        except ChatError as error:
            self._refused(error)
            raise

    def refused(self, error: ChatError) -> None:
        """Count a call refused before it reached the hub (a bad token)."""
        self._refused(error)

    async def history(
        self, request: pb.HistoryRequest, identity: Identity | None, peer: str
    ) -> pb.HistoryResponse:
        messages = await self._hub.history(
            request.room,
            before=request.before_seq or None,
            after=request.after_seq or None,
            limit=request.limit or 50,
            newest_first=request.newest_first,
            principal=principal(identity, peer),
        )
        return pb.HistoryResponse(
            messages=[codec.to_proto(m) for m in messages], epoch=self._hub.epoch
        )

    async def list_rooms(
        self, request: pb.ListRoomsRequest, identity: Identity | None, peer: str
    ) -> pb.ListRoomsResponse:
        rooms, next_token = await self._hub.rooms(
            after=request.page_token,
            limit=request.page_size,
            principal=principal(identity, peer),
            # Whose unread counts: the token's user, else the name asked for (if any).
            user=identity.name if identity else request.name,
        )
        return pb.ListRoomsResponse(
            rooms=[
                pb.RoomInfo(name=r.name, members=r.members, messages=r.messages, unread=r.unread)
                for r in rooms
            ],
            next_page_token=next_token,
        )

    async def mark_read(
        self, request: pb.MarkReadRequest, identity: Identity | None, peer: str
    ) -> pb.MarkReadResponse:
        """Move the caller's read marker (the token's user, else `request.name`); every
        session of that user here in the room is told."""
        seq = await self._hub.mark_read(
            identity.name if identity else request.name,
            request.room,
            request.seq,
            principal=principal(identity, peer),
        )
        return pb.MarkReadResponse(seq=seq)

    def list_members(
        self, request: pb.ListMembersRequest, identity: Identity | None, peer: str
    ) -> pb.ListMembersResponse:
        page = self._hub.members_page(
            request.room,
            after=request.page_token,
            limit=request.page_size,
            principal=principal(identity, peer),
        )
        return pb.ListMembersResponse(
            members=page.names, next_page_token=page.next_token, total=page.total
        )

    @contextlib.asynccontextmanager
    async def subscription(
        self, request: pb.SubscribeRequest, identity: Identity | None, peer: str
    ) -> AsyncIterator[Session]:
        """A session that has joined the request's room (replaying from its position), for the
        duration of the block; its writer is the caller's."""
        name = identity.name if identity else request.name
        async with self._hub.connect(
            name, authenticated=identity is not None, peer=peer
        ) as session:
            with self.stats.session_open("subscribe"):
                after = request.after if request.HasField("after") else None
                await self._hub.join(
                    session,
                    request.room,
                    after=codec.position_from_proto(after) if after is not None else None,
                    history=request.history,
                )
                yield session

    # -- the gRPC handlers ------------------------------------------------------------------

    @maps_errors
    async def Send(self, request: pb.SendRequest, context: Context) -> pb.SendResponse:
        try:
            identity = self._identify(context)
        except ChatError as error:
            self._refused(error)
            raise
        return await self.send(request, identity, _peer(context))

    @maps_errors
    async def History(self, request: pb.HistoryRequest, context: Context) -> pb.HistoryResponse:
        return await self.history(request, self._identify(context), _peer(context))

    @maps_errors
    async def ListRooms(
        self, request: pb.ListRoomsRequest, context: Context
    ) -> pb.ListRoomsResponse:
        return await self.list_rooms(request, self._identify(context), _peer(context))

    @maps_errors
    async def MarkRead(self, request: pb.MarkReadRequest, context: Context) -> pb.MarkReadResponse:
        return await self.mark_read(request, self._identify(context), _peer(context))

    @maps_errors
    async def ListMembers(
        self, request: pb.ListMembersRequest, context: Context
    ) -> pb.ListMembersResponse:
        return self.list_members(request, self._identify(context), _peer(context))

    @maps_errors
    async def Subscribe(self, request: pb.SubscribeRequest, context: Context) -> None:
        identity = self._identify(context)
        async with self.subscription(request, identity, _peer(context)) as session:
            await write_session(
                session,
                context,
                identity,
                frame_events,
                stats=self.stats,
                heartbeat=self._heartbeat,
            )

    @maps_errors
    async def Connect(self, requests: AsyncIterator[pb.ConnectRequest], context: Context) -> None:
        # Headers first: the client writes nothing until it knows this server has Connect
        # (and whether it may pack sends).
        await context.send_initial_metadata((codec.SENDS_HEADER,))
        peer = _peer(context)
        async with contextlib.AsyncExitStack() as stack:
            try:
                # Counted from now: a stream that has not said hello holds one of its
                # address's slots too, or one address could hold thousands open.
                stack.enter_context(self._hub.peer_slot(peer))
                # A bad token is refused as a bad hello is (a client may write at once).
                identity = self._identify(context)
                first = await _hello(requests)
                name = identity.name if identity else first.hello.name
                if not name:
                    raise InvalidInput("name must not be empty")
                session = await stack.enter_async_context(
                    self._hub.connect(
                        name, authenticated=identity is not None, peer=peer, peer_counted=True
                    )
                )
            except TimedOut:
                raise  # it said nothing: nothing to wait for
            except ChatError as error:
                refused = RequestRefused("", status_of(error).name, str(error))
                await _refuse_stream(requests, context, frame_events([Envelope(refused)])[0])
                raise
            stack.enter_context(self.stats.session_open("connect"))
            steering = asyncio.create_task(self._steer(requests, session))
            try:
                await write_session(
                    session,
                    context,
                    identity,
                    frame_events,
                    headers_sent=True,
                    stats=self.stats,
                    heartbeat=self._heartbeat,
                )
            finally:
                await _cancel(steering)

    async def _steer(self, requests: AsyncIterator[pb.ConnectRequest], session: Session) -> None:
        """Apply joins and leaves; a refused one is reported as an event, the session goes on.
        The client's half-close ends the session; a request that does not parse ends it with
        INVALID_ARGUMENT; anything unexpected ends it too, so the client reconnects instead of
        talking to a session that ignores it."""
        try:
            await self._apply_requests(requests, session)
        except ChatError as error:  # a request that did not parse
            session.close(error)
            return
        except Exception:
            if session.closed:
                return  # the call was ended (a cut-off, a drain): reading it fails, as expected
            log.exception(
                "session %r failed", session.name, extra=_fields("session_failed", session)
            )
            session.close(ServerDraining("internal error; reconnect"))
            return
        session.close()

    async def _apply_requests(
        self, requests: AsyncIterator[pb.ConnectRequest], session: Session
    ) -> None:
        # Sends are posted concurrently (see InFlight); joins and leaves are applied in line.
        posting = InFlight(
            lambda error: _failed(session, error), in_flight_limit(self._hub.limits.queue_size)
        )
        hold = Hold()
        try:
            async for request in requests:
                if session.closed:
                    break
                action = request.WhichOneof("action")
                if action == "send":
                    sends: Iterable[pb.SendRequest] = (request.send,)
                elif action == "sends":
                    sends = request.sends.sends
                else:
                    await self._apply(request, session)
                    continue
                for send in sends:
                    if send.recipient:
                        # A direct message skips the history and is delivered at once: it
                        # waits for the sends written before it, or it would overtake them
                        # (and is not sent at all if one of them ended the session).
                        await posting.drain()
                    if session.lagging:  # its answers pile up unwritten: read no further
                        await session.until_caught_up()
                    if session.closed:
                        break
                    if not send.recipient:
                        # While the room is behind, stop reading (flow control holds the
                        # client); a bad room name is refused by the post itself.
                        with contextlib.suppress(ChatError):
                            await self._hub.until_accepting(send.room)
                    await posting.start(
                        functools.partial(self._send_on_session, send, session, hold)
                    )
        finally:
            # Their acks are queued before the session ends, so they are flushed with it.
            await posting.drain()

    async def _apply(self, request: pb.ConnectRequest, session: Session) -> None:
        """One join, leave, typing notice or read marker; a refusal is queued as a
        RequestRefused event."""
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
            elif action == "typing":
                room = request.typing.room
                self._hub.typing(session, room, request.typing.active)
            elif action == "mark_read":
                # The session's user: a name in the request is for unary calls without auth.
                room = request.mark_read.room
                if (checked := check_room(room)) not in session.rooms:
                    # As for typing: a session speaks for the rooms it is in (MarkRead, the
                    # unary call, marks any room).
                    raise NotFound(f"not in #{checked}: join it to mark it read")
                await self._hub.mark_read(
                    session.name,
                    room,
                    request.mark_read.seq,
                    principal=session.principal,
                    told=session,
                )
            elif action == "hello":
                raise InvalidInput("hello may only open a session")
            else:  # empty, or an action this server does not know (a newer client's)
                raise InvalidInput("a request with no action this server knows")
        except ChatError as error:
            refused = RequestRefused(room, status_of(error).name, str(error))
            session.offer(Envelope(refused))

    async def _send_on_session(self, request: pb.SendRequest, session: Session, hold: Hold) -> None:
        """Post one message written on a session stream and queue its SendAck; any refusal is
        an ack with the status code. A refusal for now holds the stream's later sends (`Hold`)."""
        if not request.key:
            self.stats.refuse("INVALID_ARGUMENT")
            ack = SendAck(
                "",
                None,
                code="INVALID_ARGUMENT",
                reason="a message on a session stream needs a key: its SendAck carries it back",
            )
            session.answer(Envelope(ack))
            return
        if (wait := hold.wait(request.key)) is not None:
            held = LimitExceeded(
                "slow down: an earlier message is over the rate (or its room busy) and goes "
                "first, so that messages keep their order",
                retry_after=wait,
            )
            code = self._refused(held)
            ack = SendAck(request.key, None, code=code, reason=str(held), retry_after=wait)
            session.answer(Envelope(ack))
            return
        try:
            appended = await self._hub.post(
                session.name,
                request.text,
                room=request.room,
                key=request.key,
                recipient=request.recipient,
                action=request.action,
                principal=session.principal,
                reply_to=request.reply_to,
                relation=_relation_of(request),
                shielded=False,  # an InFlight post
            )
        except StoreError as error:
            # The history could not take it (NATS gone for a moment): the stream ends
            # (UNAVAILABLE) unanswered, and the client writes what it has not had answered
            # again on its next stream, in the order first written, with the same keys.
            # Answered one by one, each send would be retried on a timer of its own.
            session.close(error)
            return
        except ChatError as error:
            retry_after = error.retry_after if isinstance(error, LimitExceeded) else None
            if retry_after is not None:
                hold.hold(request.key, retry_after)
            code = self._refused(error)
            ack = SendAck(request.key, None, code=code, reason=str(error), retry_after=retry_after)
        else:
            if not appended.duplicate:
                log_accepted(appended.message)
            ack = SendAck(request.key, appended.message, appended.duplicate)
        session.answer(Envelope(ack))

    @maps_errors
    async def Chat(self, requests: AsyncIterator[pb.ChatMessage], context: Context) -> None:
        """The article's stream: lobby only, one ChatMessage per response."""
        peer = _peer(context)
        async with contextlib.AsyncExitStack() as stack:
            try:
                identity = self._identify(context)
                # Anonymous without auth (the article's client names itself per message);
                # with auth the token's user, so its streams count against its limits and
                # show in presence.
                name = identity.name if identity else ""
                session = await stack.enter_async_context(
                    self._hub.connect(name, authenticated=identity is not None, peer=peer)
                )
                await self._hub.join(session, DEFAULT_ROOM)
            except ChatError as error:
                await stack.aclose()  # its session goes before the call is held
                notice = _article_notice(f"{error} ({status_of(error).name}); {ARTICLE_ENDED}")
                await _refuse_stream(requests, context, each_chat_message([Envelope(notice)])[0])
                raise
            stack.enter_context(self.stats.session_open("chat"))
            principal = identity.name if identity else peer
            refused, ended = asyncio.Event(), asyncio.Event()
            reader = asyncio.create_task(
                self._read_legacy(requests, session, identity, principal, refused, ended)
            )
            try:
                await write_session(session, context, identity, each_chat_message, stats=self.stats)
            except ChatError:
                if refused.is_set():
                    # Refused what the client wrote: the reader reads on (posting nothing)
                    # until the client stops writing, a while at most, before the call ends
                    # (see `_refuse_stream`). Ended for anything else, the call ends at once.
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(asyncio.shield(reader), REFUSAL_GRACE)
                raise
            finally:
                ended.set()
                await _cancel(reader)

    async def _read_legacy(
        self,
        requests: AsyncIterator[pb.ChatMessage],
        session: Session,
        identity: Identity | None,
        principal: str,
        refused: asyncio.Event,
        ended: asyncio.Event,
    ) -> None:
        """Post what a Chat client writes; its half-close ends the call, as in the article.
        `refused` is set when a message is refused (which ends the call); `ended` once the
        call is over.

        The article's stream has no way to refuse one message, so over the rate limit, or while
        the lobby's readers are behind, it is throttled (we stop reading until the message may
        be posted; HTTP/2 flow control holds the client back) instead of being ended. Messages
        are posted concurrently (see InFlight). A message refused (a bad text) ends the call
        with its status: checked as it is read, so the messages before it are posted and
        echoed first and none written after it is posted; a refusal only the post itself can
        make (a reply to an unknown message) ends it as soon as it comes."""

        def failed(error: BaseException) -> None:
            # A refusal of what the client wrote; not the server's own trouble (its history
            # out of reach, a drain), after which there is nothing to wait for.
            if isinstance(error, ChatError) and not isinstance(error, StoreError | ServerDraining):
                refused.set()
            _tell_article_client(session, error)
            _failed(session, error)

        posting = InFlight(failed, in_flight_limit(self._hub.limits.queue_size))
        loop = asyncio.get_running_loop()
        throttled_until = 0.0
        line = WaitingLine()

        async def post(send: pb.SendRequest) -> None:
            nonlocal throttled_until
            holds_line = await line.wait_turn()
            try:
                # Once the call has ended (the client left), a post still waiting for its turn
                # or its rate is dropped: posted seconds after its writer left, it was never
                # echoed to it.
                while not ended.is_set():
                    try:
                        await self._post(send, identity, principal, shielded=False)  # InFlight
                        return
                    except LimitExceeded as error:
                        if error.retry_after is None:
                            self._refused(error)
                            raise
                        # Throttled, not refused (a rate-limited try counts as rate-limited).
                        if not holds_line:
                            line.hold()
                            holds_line = True
                        throttled_until = max(throttled_until, loop.time() + error.retry_after)
                        await asyncio.sleep(error.retry_after)
                    except ChatError as error:
                        self._refused(error)
                        raise
            finally:
                if holds_line:
                    line.done()

        try:
            async for request in requests:
                if session.closed:
                    break
                if (pause := throttled_until - loop.time()) > 0:
                    await asyncio.sleep(pause)
                await self._hub.until_accepting(DEFAULT_ROOM)
                send = _article_send(request, anonymous=identity is None)
                await posting.start(functools.partial(post, send))
            else:
                await posting.drain()
                session.close()
                return
        except ChatError as error:
            refused.set()
            self._refused(error)
            await posting.drain()  # what was read before it is posted and echoed first
            _tell_article_client(session, error)
            session.close(error)
        except Exception:
            if not session.closed:  # else the call was ended: reading it fails, as expected
                log.exception(
                    "chat stream of %r failed",
                    session.name,
                    extra=_fields("session_failed", session),
                )
                session.close(ServerDraining("internal error; reconnect"))
            return
        finally:
            await posting.drain()
        # Refused: read on, posting nothing, until the client stops writing (the handler waits
        # for that a while only).
        with contextlib.suppress(grpc.RpcError, ChatError):
            async for _ in requests:
                pass


async def _hello(requests: AsyncIterator[pb.ConnectRequest]) -> pb.ConnectRequest:
    """A Connect stream's first request, which must be its hello, within HELLO_TIMEOUT."""
    try:
        first = await asyncio.wait_for(anext(aiter(requests), None), HELLO_TIMEOUT)
    except TimeoutError:
        raise TimedOut(f"no hello within {HELLO_TIMEOUT:g}s") from None
    if first is None or first.WhichOneof("action") != "hello":
        raise InvalidInput("a session starts with a hello")
    return first


async def _refuse_stream(requests: AsyncIterator[object], context: Context, notice: bytes) -> None:
    """Say why a stream cannot go on (`notice`, a response of the call's type), and let the
    client stop writing before the call ends: ending it while the client's writes are still in
    flight makes grpc.aio clients report INTERNAL instead of our status (grpc/grpc#36066)."""
    await context.write(notice)
    with contextlib.suppress(TimeoutError, grpc.RpcError, ChatError):
        async with asyncio.timeout(REFUSAL_GRACE):
            async for _ in requests:
                pass


def _relation_of(request: pb.SendRequest) -> Relation | None:
    """The edit, delete or reaction a send asks for (None: a new message)."""
    if not request.HasField("relation"):
        return None
    relation = codec.relation_from_proto(request.relation)
    if relation is None:
        raise InvalidInput(
            f"unknown relation kind {request.relation.kind}: use edit, delete, react or unreact"
        )
    return relation


def _fields(event: str, session: Session) -> dict[str, object]:
    """A log record's event and the session it is about."""
    return {"event": event, "session": session.name, "peer": session.peer}


async def _cancel(task: asyncio.Task[None]) -> None:
    """Cancel a helper task and wait for it, so nothing it does outlives the call."""
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


# Who a line of the server's own on the article's stream is from.
SERVER_SENDER = "grpcchat"


# How a refusal that ends an article `Chat` stream ends its notice.
ARTICLE_ENDED = "this chat has ended, start it again"


def _tell_article_client(session: Session, error: BaseException) -> None:
    """A refusal that ends an article `Chat` stream is said on the stream too, as a line from
    the server, before its status: the article's client shows what it receives but not how a
    stream ended, so its user saw nothing, and what they typed next went nowhere."""
    if not isinstance(error, ChatError) or session.closed:
        return
    code = status_of(error).name
    session.offer(Envelope(_article_notice(f"not sent: {error} ({code}); {ARTICLE_ENDED}")))


def _article_notice(text: str) -> Message:
    return Message(new_message_id(), DEFAULT_ROOM, SERVER_SENDER, text, datetime.now(UTC), 0)


def _article_send(request: pb.ChatMessage, *, anonymous: bool) -> pb.SendRequest:
    """What a message written on the article's stream posts, checked as it is read. The stream
    posts to the lobby only, as the article's server does: a message that asks for more
    (another room, a recipient, a change of an earlier message) is refused, never posted to
    the lobby as if it were plain."""
    if request.recipient:
        raise InvalidInput(
            "the Chat stream cannot send a direct message (it would be posted to the lobby): "
            "use Send or a Connect session"
        )
    if request.room and check_room(request.room) != DEFAULT_ROOM:
        raise InvalidInput(
            f"the Chat stream posts to #{DEFAULT_ROOM} only: "
            "use Send or a Connect session for other rooms"
        )
    if request.HasField("relation"):
        raise InvalidInput(
            "the Chat stream cannot edit, delete or react to a message: "
            "use Send or a Connect session"
        )
    check_text(request.text)
    if anonymous:
        check_name(request.sender)  # with auth, the token names the sender
    return pb.SendRequest(
        sender=request.sender,
        text=request.text,
        action=request.action,
        reply_to=request.reply_to,
    )


def _failed(session: Session, error: BaseException) -> None:
    """A post of the session's stream failed: a refusal ends the call with its status, anything
    else is a bug, logged, and the client is told to reconnect."""
    if isinstance(error, ChatError):
        session.close(error)
        return
    fields = _fields("post_failed", session)
    log.error("posting from session %r failed", session.name, exc_info=error, extra=fields)
    session.close(ServerDraining("internal error; reconnect"))


def _peer(context: Context) -> str:
    """The client's address without its port (see `peers`)."""
    return grpc_peer(context.peer() or "")


def principal(identity: Identity | None, peer: str) -> str:
    """Whom per-client limits count against: the authenticated user, else the address."""
    return identity.name if identity is not None else peer


__all__ = ["ChatServicer", "principal"]
