"""Authentication (HS256 bearer tokens) and the limits that belong to an identity, over the real
wire: every failure mode, spoofing attempts, expiry on live streams, sessions per user, rate."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import jwt
import pytest

from grpcchat.client import ChatClient
from grpcchat.client.config import ClientConfig
from grpcchat.core.errors import InvalidInput, RemoteError
from grpcchat.core.limits import Limits
from grpcchat.core.models import Message, PresenceChange, RoomJoined
from grpcchat.gen.chat.v1 import chat_service_pb2 as pb
from grpcchat.gen.chat.v1 import chat_service_pb2_grpc as pb_grpc
from grpcchat.server import ChatServer
from grpcchat.server.auth import ISSUER, MIN_SECRET_LENGTH, TokenAuthority
from grpcchat.server.config import ServerConfig
from tests.conftest import ServerProcess, cli_env, run_cli, run_cli_async
from tests.helpers import Follower
from tests.test_rooms import RawSession, before_marker, events_until, messages_of

SECRET = "auth-tests-secret-0123456789abcdef"
OTHER_SECRET = "not-the-servers-secret-0123456789"
WAIT = 5.0
SESSIONS_PER_USER = 3
authority = TokenAuthority(SECRET)
Metadata = tuple[tuple[str, str], ...]


@pytest.fixture
def server_config() -> ServerConfig:
    return ServerConfig(
        port=0,
        store="memory://",
        auth_secret=SECRET,
        limits=Limits(rate=0, request_rate=0, max_sessions_per_user=SESSIONS_PER_USER),
        grace_period=0.5,
    )


def token(name: str, ttl: timedelta = timedelta(minutes=5)) -> str:
    return authority.mint(name, ttl)


def bearer(value: str) -> Metadata:
    return (("authorization", f"Bearer {value}"),)


def signed(claims: dict[str, Any], secret: str = SECRET, algorithm: str = "HS256") -> str:
    return jwt.encode(claims, secret, algorithm=algorithm)


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {"sub": "alice", "iss": ISSUER, "iat": now, "exp": now + 300}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


@asynccontextmanager
async def client_as(addr: str, name: str, **config: Any) -> AsyncIterator[ChatClient]:
    async with ChatClient(ClientConfig(addr=addr, token=token(name), timeout=5, **config)) as c:
        yield c


@pytest.fixture
async def channel(addr: str) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(addr) as opened:
        yield opened


# -- every call needs a valid token -------------------------------------------------------------


def _unary_calls(stub: pb_grpc.ChatServiceStub) -> dict[str, Callable[..., Any]]:
    return {
        "Send": lambda md: stub.Send(pb.SendRequest(sender="alice", text="hi"), metadata=md),
        "History": lambda md: stub.History(pb.HistoryRequest(), metadata=md),
        "ListRooms": lambda md: stub.ListRooms(pb.ListRoomsRequest(), metadata=md),
        "ListMembers": lambda md: stub.ListMembers(pb.ListMembersRequest(), metadata=md),
    }


async def _stream_error(call: Any, first: Any = None) -> grpc.aio.AioRpcError:
    """The error a stream call ends with (the server must refuse it). A session stream says
    why first, as an event (the article's stream: as a line from the server); the client then
    stops writing, as ours does."""
    try:
        if first is not None:
            await call.write(first)
        response = await asyncio.wait_for(call.read(), WAIT)
        if response is not grpc.aio.EOF:
            if isinstance(response, pb.ChatMessage):
                assert response.sender == "grpcchat"
                assert response.text.endswith("; this chat has ended, start it again")
            else:
                [event] = response.events
                assert event.refused.room == ""
            await call.done_writing()
            await asyncio.wait_for(call.read(), WAIT)
    except grpc.aio.AioRpcError as error:
        return error
    pytest.fail("the call was not refused")


async def _every_rpc_fails(channel: grpc.aio.Channel, metadata: Metadata, reason: str) -> None:
    stub = pb_grpc.ChatServiceStub(channel)
    errors: dict[str, grpc.aio.AioRpcError] = {}
    for rpc, call in _unary_calls(stub).items():
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call(metadata)
        errors[rpc] = caught.value
    errors["Subscribe"] = await _stream_error(
        stub.Subscribe(pb.SubscribeRequest(name="alice"), metadata=metadata)
    )
    errors["Connect"] = await _stream_error(stub.Connect(metadata=metadata))  # type: ignore[call-arg]
    errors["Chat"] = await _stream_error(stub.Chat(metadata=metadata))  # type: ignore[call-arg]
    for rpc, error in errors.items():
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED, (rpc, error)
        assert reason in (error.details() or ""), (rpc, error.details())


async def test_every_rpc_needs_a_token(
    server: ChatServer, channel: grpc.aio.Channel, addr: str
) -> None:
    await _every_rpc_fails(channel, (), "authentication required: pass --token")
    # Nothing got through: no message stored, no session registered.
    async with client_as(addr, "alice") as client:
        assert await client.rooms() == []
    assert server.hub.session_count() == 0


def _tampered() -> Metadata:
    """Alice's header and signature around claims that say bob."""
    header, _, signature = token("alice").split(".")
    _, payload, _ = signed(claims(sub="bob"), OTHER_SECRET).split(".")
    return bearer(f"{header}.{payload}.{signature}")


def _ago(seconds: int) -> int:
    return int(time.time()) - seconds


# Each case: how to build the metadata (at run time, so nothing expires by accident), and what
# the refusal must say.
BAD_TOKENS: dict[str, tuple[Callable[[], Metadata], str]] = {
    "not bearer": (
        lambda: (("authorization", "Basic YWxpY2U6c2VjcmV0"),),
        "authorization must be `Bearer <token>`",
    ),
    "bearer without token": (
        lambda: (("authorization", "Bearer   "),),
        "authorization must be `Bearer <token>`",
    ),
    "garbage": (lambda: bearer("not-a-jwt"), "token is malformed"),
    "three garbage parts": (lambda: bearer("a.b.c"), "token is malformed"),
    "signed with another secret": (
        lambda: bearer(signed(claims(), OTHER_SECRET)),
        "token signature is invalid (wrong secret?)",
    ),
    "tampered payload": (_tampered, "token signature is invalid"),
    "expired": (
        lambda: bearer(signed(claims(exp=_ago(5)))),
        "token expired; mint a new one with `grpcchat token`",
    ),
    "alg none": (
        lambda: bearer(jwt.encode(claims(), None, algorithm="none")),
        "alg value is not allowed",
    ),
    "alg HS512 with the right secret": (
        lambda: bearer(signed(claims(), SECRET + SECRET, "HS512")),
        "alg value is not allowed",
    ),
    "no exp": (lambda: bearer(signed(claims(exp=None))), 'missing the "exp" claim'),
    "no sub": (lambda: bearer(signed(claims(sub=None))), 'missing the "sub" claim'),
    "empty sub": (lambda: bearer(signed(claims(sub=""))), "token carries no user name"),
    "sub not a string": (lambda: bearer(signed(claims(sub=42))), "Subject must be a string"),
    "wrong issuer": (lambda: bearer(signed(claims(iss="someone-else"))), "Invalid issuer"),
    "no issuer": (lambda: bearer(signed(claims(iss=None))), 'missing the "iss" claim'),
    "not yet valid": (lambda: bearer(signed(claims(nbf=_ago(-3600)))), "not yet valid"),
    "exp not a number": (lambda: bearer(signed(claims(exp="tomorrow"))), "token"),
    "name too long": (
        lambda: bearer(signed(claims(sub="a" * 100))),
        "token carries an invalid user name",
    ),
    "name with control characters": (
        lambda: bearer(signed(claims(sub="ali\x1b[31mce"))),
        "token carries an invalid user name",
    ),
    "exp beyond the calendar": (
        lambda: bearer(signed(claims(exp=10**12))),
        "token expiry is out of range",
    ),
    # PyJWT takes a string of digits for an integer; the expiry time did not (a TypeError).
    "exp a string of digits": (
        lambda: bearer(signed(claims(exp=str(int(time.time()) + 3600)))),
        "token expiry is out of range or not a number",
    ),
}


@pytest.mark.parametrize("case", list(BAD_TOKENS))
async def test_bad_tokens_are_unauthenticated_with_a_reason(
    channel: grpc.aio.Channel, case: str
) -> None:
    build, reason = BAD_TOKENS[case]
    await _every_rpc_fails(channel, build(), reason)


async def test_a_good_token_works_on_every_rpc(addr: str) -> None:
    async with (
        client_as(addr, "alice") as client,
        Follower(client.session("alice", ["lobby", "ops"])) as alice,
    ):
        sent = await client.send("alice", "hi", "ops")
        [received] = await alice.messages(1)
        assert received.id == sent.message.id
        assert [m.id for m in await client.history("ops")] == [sent.message.id]
        assert await client.members("ops") == ["alice"]
        assert {r.name for r in await client.rooms()} == {"lobby", "ops"}


async def _refused_while_writing(call: Any, requests: list[Any]) -> grpc.aio.AioRpcError:
    """The error a stream ends with when the client writes everything at once, unasked, as
    the article's client does, and only then reads."""
    try:
        for request in requests:
            await call.write(request)
        await call.done_writing()
        async with asyncio.timeout(WAIT):
            while await call.read() is not grpc.aio.EOF:
                pass
    except grpc.aio.AioRpcError as error:
        return error
    pytest.fail("the call was not refused")


async def test_a_bad_token_is_unauthenticated_while_the_client_writes(
    channel: grpc.aio.Channel,
) -> None:
    """Refused while the client's writes are still on their way, the streams still end with
    UNAUTHENTICATED: the server reads them (posting nothing) before it ends the call. Ended
    at once, grpc.aio clients saw INTERNAL "Internal error from Core" about half the time
    (grpc/grpc#36066)."""
    stub = pb_grpc.ChatServiceStub(channel)
    metadata = bearer("not-a-jwt")
    session = [
        pb.ConnectRequest(hello=pb.Hello(name="mallory")),
        pb.ConnectRequest(join=pb.JoinRoom(room="lobby")),
        pb.ConnectRequest(join=pb.JoinRoom(room="ops")),
    ]
    lines = [pb.ChatMessage(sender="mallory", text=f"line {i}") for i in range(3)]
    for _ in range(10):  # a race: each round could lose it
        for error in (
            await _refused_while_writing(stub.Connect(metadata=metadata), session),  # type: ignore[call-arg]
            await _refused_while_writing(stub.Chat(metadata=metadata), lines),  # type: ignore[call-arg]
        ):
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED, error
            assert error.details() == "token is malformed"


def test_secrets_must_be_long_enough_for_hs256() -> None:
    with pytest.raises(ValueError, match=f"at least {MIN_SECRET_LENGTH} characters"):
        TokenAuthority("x" * (MIN_SECRET_LENGTH - 1))
    # RFC 7518: an HS256 key must be at least as long as the hash (256 bits).
    assert MIN_SECRET_LENGTH >= 32


def test_minted_tokens_carry_name_issuer_and_expiry() -> None:
    before = datetime.now(UTC)
    decoded = jwt.decode(
        token("alice", timedelta(hours=2)), SECRET, algorithms=["HS256"], issuer=ISSUER
    )
    assert decoded["sub"] == "alice"
    expires = datetime.fromtimestamp(decoded["exp"], UTC)
    assert before + timedelta(hours=2) - timedelta(seconds=2) <= expires
    assert expires <= datetime.now(UTC) + timedelta(hours=2)
    with pytest.raises(ValueError, match="positive"):
        authority.mint("alice", timedelta(0))
    with pytest.raises(ValueError, match="too long"):
        authority.mint("alice", timedelta(days=10**8))
    with pytest.raises(InvalidInput, match="control characters"):
        authority.mint("ali\nce", timedelta(hours=1))


# -- the token's name is the only name ----------------------------------------------------------


async def test_send_claiming_another_sender_is_sent_as_the_token_user(
    addr: str, channel: grpc.aio.Channel
) -> None:
    async with (
        client_as(addr, "bob") as bobs,
        Follower(bobs.session("bob")) as bob,
    ):
        stub = pb_grpc.ChatServiceStub(channel)
        for claimed in ("bob", "", "system"):
            response = await stub.Send(
                pb.SendRequest(sender=claimed, text=f"as {claimed!r}"),
                metadata=bearer(token("mallory")),
            )
            assert response.message.sender == "mallory"
        got = await bob.messages(3)
        assert {m.sender for m in got} == {"mallory"}


async def test_two_authorization_headers_are_refused(channel: grpc.aio.Channel) -> None:
    """The gRPC port took the last and the web port the first: one request was bob here and
    alice there. Which one speaks for a call must not depend on the port."""
    stub = pb_grpc.ChatServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.Send(
            pb.SendRequest(text="who am I?"),
            metadata=(*bearer(token("alice")), *bearer(token("bob"))),
        )
    assert (refused.value.code(), refused.value.details()) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "a call carries one authorization header, not 2",
    )


async def test_a_spoofed_direct_message_is_from_the_token_user(
    addr: str, channel: grpc.aio.Channel
) -> None:
    async with (
        client_as(addr, "bob") as bobs,
        client_as(addr, "carol") as carols,
        client_as(addr, "mallory") as mallorys,
        Follower(bobs.session("bob")) as bob,
        Follower(carols.session("carol")) as carol,
        Follower(mallorys.session("mallory")) as mallory,
    ):
        stub = pb_grpc.ChatServiceStub(channel)
        request = pb.SendRequest(sender="bob", text="it's me, bob", recipient="carol")
        await stub.Send(request, metadata=bearer(token("mallory")))
        [to_carol] = await carol.messages(1)
        assert (to_carol.sender, to_carol.recipient) == ("mallory", "carol")
        # The copy goes to the real sender's sessions, not to those of the name claimed.
        [copy] = await mallory.messages(1)
        assert copy.id == to_carol.id
        assert messages_of(await before_marker(bobs, bob)) == []


async def test_session_and_subscription_names_come_from_the_token(
    addr: str, channel: grpc.aio.Channel
) -> None:
    async with (
        client_as(addr, "carol") as carols,
        Follower(carols.session("carol")) as carol,
    ):
        stub = pb_grpc.ChatServiceStub(channel)
        raw = RawSession(channel, bearer(token("mallory")))
        await raw.hello("carol")  # claims to be carol, who is in the lobby already
        await raw.join("lobby")
        [joined] = (await raw.until("joined"))[-1:]
        assert list(joined.joined.members) == ["carol", "mallory"]
        notice = await carol.next_event()
        assert isinstance(notice, PresenceChange)
        assert (notice.name, notice.joined) == ("mallory", True)

        subscribed = stub.Subscribe(
            pb.SubscribeRequest(name="carol", room="ops"), metadata=bearer(token("eve"))
        )
        await asyncio.wait_for(subscribed.initial_metadata(), WAIT)
        assert await carols.members("ops") == ["eve"]
        assert await carols.members() == ["carol", "mallory"]
        raw.cancel()
        subscribed.cancel()


async def test_the_legacy_chat_stream_speaks_as_the_token_user(
    addr: str, channel: grpc.aio.Channel
) -> None:
    async with (
        client_as(addr, "carol") as carols,
        Follower(carols.session("carol")) as carol,
    ):
        stub = pb_grpc.ChatServiceStub(channel)
        call = stub.Chat(metadata=bearer(token("mallory")))  # type: ignore[call-arg]
        await call.write(pb.ChatMessage(sender="carol", text="trust me"))
        echoed = await asyncio.wait_for(call.read(), WAIT)
        assert isinstance(echoed, pb.ChatMessage)
        assert (echoed.sender, echoed.text) == ("mallory", "trust me")
        [seen] = await carol.messages(1)
        assert (seen.sender, seen.text) == ("mallory", "trust me")
        call.cancel()


async def test_one_identity_may_hold_several_sessions_listed_once(addr: str) -> None:
    async with (
        client_as(addr, "bob") as bobs,
        client_as(addr, "alice") as alices,
        Follower(bobs.session("bob")) as bob,
    ):
        first = Follower(alices.session("alice"))
        async with first:
            notice = await bob.next_event()
            assert isinstance(notice, PresenceChange)
            assert (notice.name, notice.joined) == ("alice", True)
            async with Follower(alices.session("alice")) as second:
                # No ALREADY_EXISTS, one name in the list, no second join notice.
                [joined] = [e for e in second.before_connected if isinstance(e, RoomJoined)]
                assert joined.members == ("alice", "bob")
                assert await bobs.members() == ["alice", "bob"]
                assert [(r.name, r.members) for r in await bobs.rooms()] == [("lobby", 2)]
                # Both sessions get what is posted.
                sent = await alices.send("alice", "to both of me")
                for follower in (first, second):
                    assert [m.id for m in await follower.messages(1)] == [sent.message.id]
                seen = await before_marker(bobs, bob, marker="one")
                assert [type(e) for e in seen] == [Message]
            # One of alice's sessions left: she is still here, so no notice yet.
            assert not any(
                isinstance(e, PresenceChange) for e in await before_marker(bobs, bob, marker="two")
            )
            assert await bobs.members() == ["alice", "bob"]
        notice = await bob.next_event()
        assert isinstance(notice, PresenceChange)
        assert (notice.name, notice.joined) == ("alice", False)


async def test_sessions_per_user_are_limited(addr: str, channel: grpc.aio.Channel) -> None:
    rooms = ["lobby", "games", "ops"]
    stub = pb_grpc.ChatServiceStub(channel)
    async with (
        client_as(addr, "bob") as bobs,
        client_as(addr, "alice") as alices,
        Follower(bobs.session("bob", rooms)) as bob,
        AsyncExitStack() as stack,
    ):
        for room in rooms[:-1]:
            await stack.enter_async_context(Follower(alices.session("alice", room)))
        last = Follower(alices.session("alice", rooms[-1]))
        await last.__aenter__()
        # Raw calls that write nothing after the hello, so the refusal cannot race a write of
        # ours (a grpc.aio client bug, grpc/grpc#36066, turns that race into INTERNAL).
        refusals = [
            await _stream_error(
                stub.Connect(metadata=bearer(token("alice"))),  # type: ignore[call-arg]
                pb.ConnectRequest(hello=pb.Hello(name="alice")),
            ),
            await _stream_error(
                stub.Subscribe(pb.SubscribeRequest(room="other"), metadata=bearer(token("alice")))
            ),
        ]
        for error in refusals:
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert f"'alice' already has {SESSIONS_PER_USER} sessions open" in (
                error.details() or ""
            )
        # Limits are per identity: bob opens another session freely.
        async with Follower(bobs.session("bob", "elsewhere")):
            pass
        # Once one of alice's sessions ends, she may open another.
        await last.__aexit__(None, None, None)
        await events_until(bob, lambda e: isinstance(e, PresenceChange) and not e.joined)
        async with Follower(alices.session("alice", "games")) as again:
            assert any(isinstance(e, RoomJoined) for e in again.before_connected)


# -- expiry -------------------------------------------------------------------------------------


async def test_an_expired_token_ends_live_streams(addr: str, channel: grpc.aio.Channel) -> None:
    # JWT expiry has whole-second resolution: a 2 s token lives between 1 and 2 seconds.
    short = token("alice", timedelta(seconds=2))
    stub = pb_grpc.ChatServiceStub(channel)

    async def session_ends() -> RemoteError:
        async with ChatClient(ClientConfig(addr=addr, token=short, timeout=5)) as client:
            with pytest.raises(RemoteError) as caught:
                async for _ in client.session("alice", "ops").events():
                    pass
            return caught.value

    async def subscription_ends() -> grpc.aio.AioRpcError:
        call = stub.Subscribe(pb.SubscribeRequest(room="games"), metadata=bearer(short))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in call:
                pass
        return caught.value

    async def chat_ends() -> grpc.aio.AioRpcError:
        call = stub.Chat(metadata=bearer(short))  # type: ignore[call-arg]
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in call:
                pass
        return caught.value

    async with (
        client_as(addr, "bob") as bobs,
        Follower(bobs.session("bob", ["ops", "games"])) as bob,
    ):
        started = time.monotonic()
        session, subscription, chat = await asyncio.wait_for(
            asyncio.gather(session_ends(), subscription_ends(), chat_ends()), 2 + WAIT
        )
        assert time.monotonic() - started <= 3.5
        assert session.status == "UNAUTHENTICATED"
        assert "token expired" in str(session)
        for error in (subscription, chat):
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "token expired" in (error.details() or "")
        # The others carry on; they hear alice leave both rooms.
        gone: set[str] = set()

        def left_both(event: object) -> bool:
            if isinstance(event, PresenceChange) and not event.joined:
                assert event.name == "alice"
                gone.add(event.room)
            return gone == {"ops", "games"}

        await events_until(bob, left_both)
        assert await bobs.members("ops") == ["bob"]
        assert await bobs.members("games") == ["bob"]
        await bobs.send("bob", "still here", "ops")
        [message] = await bob.messages(1)
        assert message.text == "still here"


# -- rate limit ---------------------------------------------------------------------------------

RATE, BURST = 4.0, 2.0


@asynccontextmanager
async def rate_limited_server() -> AsyncIterator[str]:
    config = ServerConfig(
        port=0,
        store="memory://",
        auth_secret=SECRET,
        limits=Limits(rate=RATE, burst=BURST),
        grace_period=0.5,
    )
    async with ChatServer(config) as server:
        yield f"127.0.0.1:{server.port}"


async def test_over_the_rate_a_send_is_resource_exhausted_with_a_hint() -> None:
    async with (
        rate_limited_server() as addr,
        grpc.aio.insecure_channel(addr) as channel,
        client_as(addr, "alice") as alices,
        client_as(addr, "bob") as bobs,
        Follower(alices.session("alice")) as alice,
    ):
        stub = pb_grpc.ChatServiceStub(channel)
        as_alice = bearer(token("alice"))
        for i in range(int(BURST)):
            await stub.Send(pb.SendRequest(text=f"burst {i}"), metadata=as_alice)
        # Claiming another sender name does not draw on another bucket.
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Send(pb.SendRequest(sender="carol", text="one too many"), metadata=as_alice)
        error = caught.value
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        # The limit, and when: not a name (the principal is the token's user, or an address).
        assert re.search(
            rf"slow down: at most {RATE:g} messages a second; retry in [1-9]\d*ms$",
            error.details() or "",
        )
        assert "carol" not in (error.details() or "")
        hints = [v for k, v in error.trailing_metadata() or () if k == "retry-after-ms"]
        assert len(hints) == 1
        assert 0 < int(hints[0]) <= 1000 / RATE + 1

        # Alice's session stays open and bob, another user, is not limited.
        await bobs.send("bob", "not limited")
        got = await alice.messages(3)
        assert [m.text for m in got] == ["burst 0", "burst 1", "not limited"]

        # The client library waits as told and gets through within its timeout.
        started = time.monotonic()
        sent = await alices.send("alice", "patient")
        assert sent.message.sender == "alice"
        assert time.monotonic() - started <= 2
        [patient] = await alice.messages(1)
        assert patient.text == "patient"


async def test_the_legacy_stream_is_throttled_not_cut() -> None:
    async with (
        rate_limited_server() as addr,
        grpc.aio.insecure_channel(addr) as channel,
    ):
        call = pb_grpc.ChatServiceStub(channel).Chat(metadata=bearer(token("grace")))  # type: ignore[call-arg]
        texts = [f"line {i}" for i in range(int(BURST) + 2)]
        for text in texts:
            await call.write(pb.ChatMessage(sender="grace", text=text))
        echoed = [await asyncio.wait_for(call.read(), WAIT) for _ in texts]
        assert [m.text for m in echoed] == texts  # type: ignore[union-attr]
        call.cancel()


async def test_a_direct_message_on_the_article_s_stream_says_it_is_one(
    addr: str, channel: grpc.aio.Channel
) -> None:
    """Bob's article client (authenticated, so his direct messages reach it) shows every line
    as said in the lobby: a direct one names both ends in its sender, or it reads as public."""
    call = pb_grpc.ChatServiceStub(channel).Chat(metadata=bearer(token("bob")))  # type: ignore[call-arg]
    await asyncio.wait_for(call.initial_metadata(), WAIT)
    async with client_as(addr, "alice") as alice:
        await alice.send("alice", "just for you", recipient="bob")
        await alice.send("alice", "for everyone")
    shown = [await asyncio.wait_for(call.read(), WAIT) for _ in range(2)]
    assert [(m.sender, m.text) for m in shown] == [  # type: ignore[union-attr]
        ("alice → bob", "just for you"),
        ("alice", "for everyone"),
    ]
    call.cancel()


async def test_a_client_with_a_short_timeout_gives_up_on_the_rate_limit() -> None:
    async with rate_limited_server() as addr:
        config = ClientConfig(addr=addr, token=token("alice"), timeout=0.2)
        slow = replace(config, timeout=0.2)
        async with ChatClient(slow) as client:
            for _ in range(int(BURST)):
                await client.send("alice", "burst")
            # 1/RATE = 250 ms to wait, more than the 200 ms allowed.
            with pytest.raises(RemoteError) as caught:
                await client.send("alice", "too soon")
            assert caught.value.status == "RESOURCE_EXHAUSTED"


# -- the CLI ------------------------------------------------------------------------------------


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


async def test_cli_token_mints_what_the_server_accepts(addr: str) -> None:
    code, out, err = await run_cli_async(
        "token", "alice", "--ttl", "1h30m", env=cli_env(GRPCCHAT_AUTH_SECRET=SECRET)
    )
    assert code == 0, err
    assert err == ""
    minted = out.strip()
    decoded = jwt.decode(minted, SECRET, algorithms=["HS256"], issuer=ISSUER)
    assert decoded["sub"] == "alice"
    assert 5390 <= decoded["exp"] - time.time() <= 5400

    # The token (here from the environment) names the sender; --name is overwritten.
    code, out, err = await run_cli_async(
        "send", "--addr", addr, "--name", "bob", "--json", "hi", env=cli_env(GRPCCHAT_TOKEN=minted)
    )
    assert code == 0, err
    assert json.loads(out)["sender"] == "alice"


async def test_cli_reports_every_auth_failure_in_one_line(addr: str) -> None:
    cases = {
        "no token": ((), "authentication required"),
        "expired": (("--token", signed(claims(exp=_ago(5)))), "token expired"),
        "garbage": (("--token", "garbage"), "token is malformed"),
        "other secret": (("--token", signed(claims(), OTHER_SECRET)), "signature is invalid"),
    }
    results = await asyncio.gather(
        *(
            run_cli_async("send", "--addr", addr, "--name", "x", *args, "hi")
            for args, _ in cases.values()
        )
    )
    for (case, (_, reason)), (code, out, err) in zip(cases.items(), results, strict=True):
        assert code == 6, (case, err)
        assert out == ""
        line = _one_line(err)
        assert line.startswith("error: not authenticated:"), line
        assert reason in line, (case, line)


async def test_cli_token_refuses_bad_input() -> None:
    cases = [
        (("token", "alice"), 1, "no secret: pass --auth-secret or set GRPCCHAT_AUTH_SECRET"),
        (("token", "alice", "--auth-secret", "short"), 1, f"at least {MIN_SECRET_LENGTH}"),
        (("token", "alice", "--auth-secret", SECRET, "--ttl", "soon"), 2, "not a duration"),
    ]
    results = await asyncio.gather(*(run_cli_async(*args) for args, _, _ in cases))
    for (args, code, message), (got_code, out, err) in zip(cases, results, strict=True):
        assert got_code == code, (args, err)
        assert out == ""
        assert message in err, (args, err)


async def test_cli_token_with_an_absurd_ttl_is_a_usage_error() -> None:
    code, _, err = await run_cli_async(
        "token", "alice", "--auth-secret", SECRET, "--ttl", "9999999999d"
    )
    assert code == 2
    assert "Traceback" not in err
    assert "OverflowError" not in err


def test_cli_serve_with_auth_secret() -> None:
    server = ServerProcess("--auth-secret", SECRET, "--grace", "0")
    try:
        sent = run_cli("send", "--addr", server.addr, "--token", token("ops-bot"), "--json", "go")
        assert sent.returncode == 0, sent.stderr
        assert json.loads(sent.stdout)["sender"] == "ops-bot"
        refused = run_cli("who", "--addr", server.addr)
        assert refused.returncode == 6
        assert "authentication required" in _one_line(refused.stderr)
    finally:
        server.stop()
    short = run_cli("serve", "--port", "0", "--store", "memory://", "--auth-secret", "short")
    assert short.returncode == 1
    assert f"at least {MIN_SECRET_LENGTH} characters" in _one_line(short.stderr)


@pytest.mark.parametrize(
    ("ttl", "says"),
    [("0s", "must be positive"), ("2931000d", "too long"), ("0", "is not a duration")],
)
async def test_cli_token_refuses_a_bad_ttl_as_a_usage_error(ttl: str, says: str) -> None:
    """Every bad --ttl exits 2: `0s` and one past the year 9999 exited 1."""
    code, out, err = await run_cli_async(
        "token", "alice", "--ttl", ttl, env=cli_env(GRPCCHAT_AUTH_SECRET=SECRET)
    )
    assert (code, out) == (2, "")
    assert says in err
