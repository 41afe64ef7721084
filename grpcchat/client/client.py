"""`ChatClient`: the unary calls (send with idempotent retries, history, rooms, members) and
the door to live sessions. The CLI uses nothing else.

Against a grpcchat server posts go through `Send`; against a server that speaks only the
article's `Chat` stream (its Go server) they go over that stream (`grpcchat.client.legacy`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import grpc

from grpcchat.client.backoff import Backoff
from grpcchat.client.channel import Connection
from grpcchat.client.config import ClientConfig
from grpcchat.client.errors import retry_after
from grpcchat.client.events import Sent
from grpcchat.client.posts import check_accepted, feature, send_request, unsupported
from grpcchat.core.errors import ConfigError, RemoteError
from grpcchat.core.models import DEFAULT_ROOM, Message, Relation, RoomInfo
from grpcchat.core.validation import check_name, check_room, check_uint
from grpcchat.gen.chat.v1 import chat_service_pb2 as pb
from grpcchat.wire import codec

if TYPE_CHECKING:
    from grpcchat.client.session import ChatSession

_Reply = TypeVar("_Reply")

# Pages `latest` reads at most to find the messages asked for among edits and reactions, and
# the fewest entries it asks a page for: a page of `limit` entries may hold nothing but
# reactions (`history --limit 1` of a message twelve people reacted to found no message).
MAX_PAGES = 10
LATEST_PAGE = 100


class ChatClient:
    """A connection to one chat server. `async with ChatClient(config) as client: ...`"""

    def __init__(self, config: ClientConfig) -> None:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            # Made outside, its channel would belong to no loop, and its first call fail with
            # gRPC's "attached to a different loop".
            raise ConfigError(
                "make a ChatClient inside a running event loop (in a coroutine, such as the one "
                "asyncio.run runs): its gRPC channel belongs to the loop it is made in"
            ) from None
        self.config = config
        # The channel, stub and call metadata, shared with this client's sessions.
        self.connection = Connection(config)

    @property
    def legacy_server(self) -> bool:
        """Learned on the first UNIMPLEMENTED: the peer is the article's server."""
        return self.connection.legacy_server

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
        await self.connection.aclose()

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
        reply_to: str = "",
        relation: Relation | None = None,
    ) -> Sent:
        """Post one message and return it as the server accepted it (id, position, time).

        `reply_to` names the message (same room) this one answers; `relation` makes the post
        an edit, delete or reaction of an earlier message instead (see `posts.send_request`).

        Retries transient failures (unreachable, timeouts, rate limits) until the client's
        timeout, always with the same idempotency key, so a retry never posts twice.
        `duplicate` is true only for a `key` the caller chose that had been used before: with
        a key of this call's making, a duplicate answer means this call's own earlier attempt
        got through (its answer was lost), so the message was posted by this call.
        """
        own_key = not key
        request = send_request(
            sender,
            text,
            room,
            key=key,
            recipient=recipient,
            action=action,
            reply_to=reply_to,
            relation=relation,
        )
        deadline = time.monotonic() + self.config.timeout
        backoff = Backoff(initial=0.1, maximum=2.0)
        connection = self.connection
        # Addresses that could not be reached since the last answer: with several, the next
        # one is tried at once; once all have failed, a backoff, and round again.
        unreachable: list[str] = []
        # Whether an attempt reached the server and got no answer in time: if one did, the
        # message may be posted although this call ends without an answer.
        maybe_posted = False
        while True:
            remaining = deadline - time.monotonic()
            try:
                with connection.closed_under("this send"):
                    response: pb.SendResponse = await connection.stub.Send(
                        request,
                        timeout=max(0.05, min(remaining, max(1.0, self.config.timeout / 3))),
                        metadata=connection.metadata,
                    )
                duplicate = response.duplicate and not own_key
                message = codec.from_proto(response.message)
                if duplicate:  # the caller's key's original, whatever this request asked
                    return Sent(message, duplicate)
                return Sent(check_accepted(request, message, connection.addr), duplicate)
            except grpc.RpcError as error:
                code = error.code()
                if code == grpc.StatusCode.UNIMPLEMENTED:
                    from grpcchat.client import legacy

                    if (what := feature(request)) is not None:
                        connection.legacy_server = True
                        raise unsupported(what, connection.addr, legacy.V1_SERVER) from None
                    return await legacy.send_over_chat(connection, request)
                if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    delay = retry_after(error)
                    if delay is None:
                        raise connection.error(error) from None
                elif code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    if connection.addr not in unreachable:
                        unreachable.append(connection.addr)
                    # (An UNAVAILABLE may be the server's own word, draining: nothing posted.)
                    if code == grpc.StatusCode.DEADLINE_EXCEEDED and connection.connected:
                        maybe_posted = True
                    failure = connection.error(error, unreachable)
                    delay = 0.0
                    if len(unreachable) >= len(connection.addrs):
                        delay = backoff.next_delay()
                    if time.monotonic() + delay >= deadline:
                        if maybe_posted:
                            raise RemoteError(
                                failure.status,
                                f"{failure}; it may have been posted: the same send with key "
                                f"{request.key} posts it at most once",
                            ) from None
                        raise failure from None
                    if connection.several:
                        connection.next_address()
                    await asyncio.sleep(delay)
                    continue
                else:
                    raise connection.error(error) from None
                if time.monotonic() + delay >= deadline:
                    raise connection.error(error) from None
                await asyncio.sleep(delay)

    # -- reading ----------------------------------------------------------------------------

    async def history(
        self,
        room: str = "",
        *,
        limit: int = 50,
        before: int = 0,
        after: int = 0,
        newest_first: bool = False,
        deadline: float | None = None,
    ) -> list[Message]:
        """One page of `room`'s history; `deadline` (time.monotonic()): that of a command
        making several calls, else --timeout from now."""
        request = pb.HistoryRequest(
            room=check_room(room),
            limit=check_uint(limit, "limit", 2**32 - 1),
            before_seq=check_uint(before, "before"),
            after_seq=check_uint(after, "after"),
            newest_first=newest_first,
        )
        response = await self._unary(
            lambda timeout: self.connection.stub.History(request, **self._call_options(timeout)),
            deadline,
        )
        return [codec.from_proto(m) for m in response.messages]

    async def message_at(self, room: str, seq: int) -> Message:
        """The message at `seq` of `room`, in its current state (one History call): how a
        person's short handle for a message (its seq) becomes its id. NOT_FOUND when no
        message is kept there; INVALID_ARGUMENT when that entry is an edit, delete or reaction."""
        room, seq = check_room(room), check_uint(seq, "seq")
        found = await self.history(room, after=seq - 1, limit=1) if seq > 0 else []
        if not found or found[0].seq != seq:
            raise RemoteError(
                "NOT_FOUND", f"no message {seq} in #{room} (it may be past retention)"
            )
        message = found[0]
        if message.relation is not None:
            raise RemoteError(
                "INVALID_ARGUMENT",
                f"{seq} in #{room} is not a message but a change of one "
                f"({message.relation.kind.value})",
            )
        return message

    async def latest(self, room: str = "", *, limit: int = 20, before: int = 0) -> list[Message]:
        """The latest `limit` messages of `room` before seq `before` (0: the newest), oldest
        first, each in its current state. Edits, deletes and reactions are already applied to
        the messages they change, so their own entries are left out; pages are read backwards
        until `limit` messages are found (at most MAX_PAGES pages)."""
        limit = check_uint(limit, "limit")
        found: list[Message] = []
        cursor = before
        deadline = self._deadline()
        for _ in range(MAX_PAGES):
            page = await self.history(
                room,
                limit=max(limit, LATEST_PAGE),
                before=cursor,
                newest_first=True,
                deadline=deadline,
            )
            found += [m for m in page if m.relation is None][: limit - len(found)]
            # (A page shorter than asked is not the end: a server ends one early by bytes.)
            if len(found) >= limit or not page or page[-1].seq <= 1:
                break
            cursor = page[-1].seq
        return found[::-1]

    async def rooms(self, *, limit: int = 0, name: str = "") -> list[RoomInfo]:
        """Rooms with members or history, by name: every page (or the first `limit` rooms).
        With `name` (or with a token: the token's user) each has that user's unread count."""
        name = check_name(name) if name else ""
        limit = check_uint(limit, "limit")
        deadline = self._deadline()

        async def page(token: str) -> tuple[list[RoomInfo], str]:
            request = pb.ListRoomsRequest(page_token=token, name=name)
            response = await self._unary(
                lambda timeout: self.connection.stub.ListRooms(
                    request, **self._call_options(timeout)
                ),
                deadline,
            )
            rooms = [RoomInfo(r.name, r.members, r.messages, r.unread) for r in response.rooms]
            return rooms, response.next_page_token

        return await _every_page(page, limit)

    async def mark_read(self, room: str, seq: int, name: str = "") -> int:
        """Move `name`'s read marker in `room` up to `seq` (with a token: the token's user's);
        it only moves forward. Returns the marker afterwards."""
        request = pb.MarkReadRequest(
            room=check_room(room), seq=check_uint(seq, "seq"), name=check_name(name) if name else ""
        )
        try:
            response = await self.connection.unary(
                lambda timeout: self.connection.stub.MarkRead(
                    request, **self._call_options(timeout)
                ),
                self.config.timeout,
            )
        except RemoteError as error:
            if error.status == "UNIMPLEMENTED":
                raise unsupported("read markers", self.connection.addr) from None
            raise
        seq_after: int = response.seq
        return seq_after

    async def members(self, room: str = "", *, limit: int = 0) -> list[str]:
        """The room's members, sorted: every page (or the first `limit` names)."""
        room = check_room(room)
        limit = check_uint(limit, "limit")
        deadline = self._deadline()

        async def page(token: str) -> tuple[list[str], str]:
            request = pb.ListMembersRequest(room=room, page_token=token)
            response = await self._unary(
                lambda timeout: self.connection.stub.ListMembers(
                    request, **self._call_options(timeout)
                ),
                deadline,
            )
            return list(response.members), response.next_page_token

        return await _every_page(page, limit)

    def _call_options(self, timeout: float) -> dict[str, Any]:
        return {"timeout": timeout, "metadata": self.connection.metadata}

    def _deadline(self) -> float:
        """When a command making several calls (pages) must be done: --timeout from now, for
        all of them together."""
        return time.monotonic() + self.config.timeout

    async def _unary(
        self, invoke: Callable[[float], Awaitable[_Reply]], deadline: float | None = None
    ) -> _Reply:
        """One call, at each address in turn if it cannot be reached, within --timeout or
        until `deadline` (UNIMPLEMENTED: the article's server)."""
        timeout = self.config.timeout if deadline is None else deadline - time.monotonic()
        try:
            return await self.connection.unary(invoke, timeout)
        except RemoteError as error:
            if error.status == "UNIMPLEMENTED":
                from grpcchat.client import legacy

                raise legacy.no_history() from None
            raise

    # -- live sessions ----------------------------------------------------------------------

    def session(
        self,
        name: str,
        rooms: str | Sequence[str] = (DEFAULT_ROOM,),
        *,
        history: int = 0,
        patient: bool = False,
    ) -> ChatSession:
        """A live session as `name` in `rooms`, replaying up to `history` recent messages of
        each room on first join. `patient`: a first connection that fails is retried too (the
        caller bounds how long), not raised."""
        from grpcchat.client.session import ChatSession

        wanted = [rooms] if isinstance(rooms, str) else list(rooms)
        rooms = [check_room(r) for r in wanted]
        history = check_uint(history, "history", 2**32 - 1)
        return ChatSession(self, check_name(name), rooms, history, patient=patient)


_Item = TypeVar("_Item")


async def _every_page(
    page: Callable[[str], Awaitable[tuple[list[_Item], str]]], limit: int
) -> list[_Item]:
    """Follow page tokens from the first page until the last (or until `limit` items)."""
    found: list[_Item] = []
    token = ""
    while True:
        items, token = await page(token)
        found += items
        if not token or (limit and len(found) >= limit):
            return found[:limit] if limit else found


__all__ = ["ChatClient"]
