"""The web port (`serve --web-port`): a real ChatServer with gRPC and the web port on free ports,
connectrpc's own client speaking Connect and gRPC-Web to it, and plain HTTP for the page."""

from __future__ import annotations

import asyncio
import http.client
import json
import re
import socket
from collections.abc import AsyncIterator
from datetime import timedelta

import grpc
import pytest
from grpc import aio

pytest.importorskip("connectrpc")

from connectrpc.code import Code
from connectrpc.errors import ConnectError
from connectrpc.protocol import ProtocolType

from grpcchat.core.limits import Limits
from grpcchat.gen.chat.v1 import chat_service_pb2 as pb
from grpcchat.gen.chat.v1 import chat_service_pb2_grpc as pb_grpc
from grpcchat.gen.chat.v1.chat_service_connect import ChatServiceClient
from grpcchat.server import ChatServer, peers
from grpcchat.server.auth import TokenAuthority
from grpcchat.server.config import WEB_PORT_ANY, ServerConfig
from grpcchat.web import app as web_app
from grpcchat.web import connections as web_connections
from grpcchat.web.app import CONTENT_SECURITY_POLICY

pytestmark = pytest.mark.timeout(30)

SECRET = "s" * 32
WAIT = 5.0


def _config(**overrides: object) -> ServerConfig:
    settings: dict[str, object] = {
        "port": 0,
        "store": "memory://",
        "limits": Limits(rate=0, request_rate=0),
        "grace_period": 1.0,
        "web_port": WEB_PORT_ANY,
    }
    settings.update(overrides)
    return ServerConfig(**settings)  # type: ignore[arg-type]


@pytest.fixture
def web_config() -> ServerConfig:
    return _config()


@pytest.fixture
async def web_server(web_config: ServerConfig) -> AsyncIterator[ChatServer]:
    async with ChatServer(web_config) as running:
        assert running.web_port > 0
        yield running


@pytest.fixture
async def web(web_server: ChatServer) -> AsyncIterator[ChatServiceClient]:
    async with ChatServiceClient(f"http://127.0.0.1:{web_server.web_port}") as client:
        yield client


@pytest.fixture
async def stub(web_server: ChatServer) -> AsyncIterator[pb_grpc.ChatServiceStub]:
    async with aio.insecure_channel(f"127.0.0.1:{web_server.port}") as channel:
        yield pb_grpc.ChatServiceStub(channel)


def _http(
    port: int,
    method: str,
    path: str,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
    host: str = "127.0.0.1",
) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection(host, port, timeout=WAIT)
    try:
        connection.request(method, path, body=body or None, headers=headers or {})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


async def http_call(port: int, method: str, path: str, **kwargs: object) -> tuple[int, dict, bytes]:
    return await asyncio.to_thread(_http, port, method, path, **kwargs)  # type: ignore[arg-type]


async def _texts(
    stream: AsyncIterator[pb.SubscribeResponse], count: int
) -> tuple[list[str], AsyncIterator[pb.SubscribeResponse]]:
    """The texts of the next `count` messages on a web Subscribe stream."""
    texts: list[str] = []
    async with asyncio.timeout(WAIT):
        async for response in stream:
            texts += [e.message.text for e in response.events if e.HasField("message")]
            if len(texts) >= count:
                break
    return texts, stream


async def _drained(stream: AsyncIterator[pb.SubscribeResponse]) -> None:
    async with asyncio.timeout(WAIT):
        async for _ in stream:
            pass


async def _registered(stream: AsyncIterator[pb.SubscribeResponse]) -> None:
    """The first response is empty: the stream is registered."""
    async with asyncio.timeout(WAIT):
        first = await anext(aiter(stream))
    assert not first.events


async def test_send_via_web_shows_in_grpc_history(
    web: ChatServiceClient, stub: pb_grpc.ChatServiceStub
) -> None:
    sent = await web.send(pb.SendRequest(sender="alice", text="hi from a browser", room="web"))
    assert sent.message.seq == 1
    history = await stub.History(pb.HistoryRequest(room="web"), timeout=WAIT)
    assert [(m.sender, m.text) for m in history.messages] == [("alice", "hi from a browser")]
    # And back: web History sees what gRPC sent.
    await stub.Send(pb.SendRequest(sender="bob", text="hi from a terminal", room="web"))
    page = await web.history(pb.HistoryRequest(room="web"))
    assert [m.text for m in page.messages] == ["hi from a browser", "hi from a terminal"]
    rooms = await web.list_rooms(pb.ListRoomsRequest())
    assert "web" in [r.name for r in rooms.rooms]


async def test_grpc_message_reaches_web_subscribe(
    web: ChatServiceClient, stub: pb_grpc.ChatServiceStub
) -> None:
    stream = web.subscribe(pb.SubscribeRequest(room="lobby", name="carol"))
    await _registered(stream)
    members = await web.list_members(pb.ListMembersRequest(room="lobby"))
    assert "carol" in members.members
    await stub.Send(pb.SendRequest(sender="dave", text="over gRPC", room="lobby"))
    texts, _ = await _texts(stream, 1)
    assert texts == ["over gRPC"]


async def test_subscribe_resumes_with_exactly_the_missed_messages(
    web: ChatServiceClient, stub: pb_grpc.ChatServiceStub
) -> None:
    for text in ("one", "two", "three"):
        await stub.Send(pb.SendRequest(sender="eve", text=text, room="resume"))
    history = await stub.History(pb.HistoryRequest(room="resume"), timeout=WAIT)
    after = pb.Position(seq=history.messages[0].seq, epoch=history.epoch)
    stream = web.subscribe(pb.SubscribeRequest(room="resume", name="frank", after=after))
    texts, _ = await _texts(stream, 2)
    assert texts == ["two", "three"]


async def test_bad_input_is_invalid_argument(web: ChatServiceClient) -> None:
    with pytest.raises(ConnectError) as refused:
        await web.send(pb.SendRequest(sender="alice", text="", room="lobby"))
    assert refused.value.code == Code.INVALID_ARGUMENT
    with pytest.raises(ConnectError) as refused:
        await _drained(web.subscribe(pb.SubscribeRequest(room="not a room!", name="x")))
    assert refused.value.code == Code.INVALID_ARGUMENT


def _has_ipv6_loopback() -> bool:
    if not socket.has_dualstack_ipv6():
        return False
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="this machine has no dual-stack IPv6 on ::1")
async def test_the_web_port_on_any_ipv6_address_takes_ipv4_too() -> None:
    """As the gRPC port on `::` does: the web port was IPv6 only (Python's default)."""
    async with ChatServer(_config(host="::")) as running:
        for host in ("127.0.0.1", "::1"):
            status, _, _ = await asyncio.to_thread(_http, running.web_port, "GET", "/", host=host)
            assert status == 200, host


async def test_bidi_rpcs_are_unimplemented_on_the_web_port(web_server: ChatServer) -> None:
    status, _, body = await http_call(
        web_server.web_port,
        "POST",
        "/chat.v1.ChatService/Connect",
        headers={"content-type": "application/connect+json", "connect-protocol-version": "1"},
        body=b"\0\0\0\0\x02{}",
    )
    assert status == 200
    assert b"unimplemented" in body


@pytest.mark.parametrize("web_config", [_config(auth_secret=SECRET)])
async def test_auth_token_required_and_its_identity_wins(
    web: ChatServiceClient, stub: pb_grpc.ChatServiceStub
) -> None:
    with pytest.raises(ConnectError) as refused:
        await web.send(pb.SendRequest(sender="mallory", text="hi", room="lobby"))
    assert refused.value.code == Code.UNAUTHENTICATED
    # Not gRPC's "pass --token": a browser user has no such flag.
    assert refused.value.message == (
        "authentication required: send `authorization: Bearer <token>` (on the page: paste it "
        "into the Token box; `grpcchat token NAME` mints one)"
    )
    token = TokenAuthority(SECRET).mint("alice", timedelta(minutes=5))
    sent = await web.send(
        pb.SendRequest(sender="mallory", text="hi", room="lobby"),
        headers={"authorization": f"Bearer {token}"},
    )
    assert sent.message.sender == "alice"


def _post_with_two_tokens(port: int, first: str, second: str) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)
    try:
        body = json.dumps({"text": "who am I?", "room": "lobby"}).encode()
        connection.putrequest("POST", "/chat.v1.ChatService/Send")
        connection.putheader("content-type", "application/json")
        connection.putheader("content-length", str(len(body)))
        connection.putheader("authorization", f"Bearer {first}")
        connection.putheader("authorization", f"Bearer {second}")
        connection.endheaders(body)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


@pytest.mark.parametrize("web_config", [_config(auth_secret=SECRET)])
async def test_two_authorization_headers_are_refused(web_server: ChatServer) -> None:
    """The web port took the first, the gRPC port the last: one request, two users."""
    authority = TokenAuthority(SECRET)
    alice, bob = (authority.mint(name, timedelta(minutes=5)) for name in ("alice", "bob"))
    status, body = await asyncio.to_thread(_post_with_two_tokens, web_server.web_port, alice, bob)
    assert status == 401
    assert json.loads(body) == {
        "code": "unauthenticated",
        "message": "a call carries one authorization header, not 2",
    }


async def test_token_in_url_is_refused(web_server: ChatServer) -> None:
    status, _, _ = await http_call(web_server.web_port, "GET", "/?token=abc")
    assert status == 400
    status, _, body = await http_call(
        web_server.web_port,
        "POST",
        "/chat.v1.ChatService/History?access_token=abc",
        headers={"content-type": "application/json"},
        body=b"{}",
    )
    assert status == 400
    assert json.loads(body)["code"] == "invalid_argument"


async def test_static_page_with_security_headers(web_server: ChatServer) -> None:
    status, headers, body = await http_call(web_server.web_port, "GET", "/")
    assert status == 200
    assert headers["content-type"] == "text/html; charset=utf-8"
    assert headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["referrer-policy"] == "no-referrer"
    assert b"<html" in body.lower()
    status, headers, _ = await http_call(web_server.web_port, "GET", "/static/app.js")
    assert status == 200
    assert headers["content-type"] == "text/javascript; charset=utf-8"
    # Every response has them, an error too.
    status, headers, _ = await http_call(web_server.web_port, "GET", "/nope")
    assert status == 404
    assert headers["content-security-policy"] == CONTENT_SECURITY_POLICY


@pytest.mark.parametrize(
    "path",
    [
        "/static/../app.py",
        "/static/%2e%2e/app.py",
        "/static/..%2fapp.py",
        "/static//etc/passwd",
        "/static/../../pyproject.toml",
        "/static/",
        "/static/.hidden",
        "/app.py",
    ],
)
async def test_path_traversal_refused(web_server: ChatServer, path: str) -> None:
    status, _, _ = await http_call(web_server.web_port, "GET", path)
    assert status == 404


async def test_cross_origin_refused(web_server: ChatServer) -> None:
    port = web_server.web_port
    evil = {"origin": "http://evil.example"}
    status, headers, _ = await http_call(port, "GET", "/", headers=evil)
    assert status == 403
    assert "access-control-allow-origin" not in headers
    status, _, _ = await http_call(
        port,
        "OPTIONS",
        "/chat.v1.ChatService/Send",
        headers={**evil, "access-control-request-method": "POST"},
    )
    assert status == 403
    status, _, body = await http_call(
        port,
        "POST",
        "/chat.v1.ChatService/History",
        headers={**evil, "content-type": "application/json"},
        body=b"{}",
    )
    assert status == 403
    assert json.loads(body)["code"] == "permission_denied"
    # The page's own origin is fine.
    own = {"origin": f"http://127.0.0.1:{port}", "content-type": "application/json"}
    status, _, _ = await http_call(
        port, "POST", "/chat.v1.ChatService/History", headers=own, body=b"{}"
    )
    assert status == 200


async def test_headers_grpc_would_refuse_are_refused_plainly(
    web_server: ChatServer, caplog: pytest.LogCaptureFixture
) -> None:
    port, json_body = web_server.web_port, {"content-type": "application/json"}
    not_utf8 = {**json_body, "authorization": "Bearer \xff\xfe"}  # sent as latin-1 bytes
    status, _, body = await http_call(
        port, "POST", "/chat.v1.ChatService/History", headers=not_utf8, body=b"{}"
    )
    assert (status, json.loads(body)["code"]) == (400, "invalid_argument")
    assert "'authorization' is not UTF-8" in json.loads(body)["message"]
    padded = {**json_body, "x-padding": "a" * 20_000}  # arriving in one read, too
    status, _, body = await http_call(
        port, "POST", "/chat.v1.ChatService/History", headers=padded, body=b"{}"
    )
    assert (status, json.loads(body)["code"]) == (431, "resource_exhausted")
    grpc_web = {"content-type": "application/grpc-web+proto", "x-padding": "a" * 20_000}
    status, headers, _ = await http_call(
        port, "POST", "/chat.v1.ChatService/History", headers=grpc_web, body=b"\0\0\0\0\0"
    )
    assert (status, headers["grpc-status"]) == (200, "8")  # RESOURCE_EXHAUSTED, trailers-only
    assert not [r for r in caplog.records if r.exc_info]  # no traceback anywhere


async def test_a_body_that_never_completes_or_never_ends_is_refused(
    web_server: ChatServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(web_app, "BODY_DEADLINE", 0.3)
    port = web_server.web_port
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:  # says 100 bytes, sends 2, then nothing
        writer.write(
            b"POST /chat.v1.ChatService/History HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{}"
        )
        await writer.drain()
        async with asyncio.timeout(WAIT):
            status_line = await reader.readline()
    finally:
        writer.close()
    assert status_line.startswith(b"HTTP/1.1 408")
    huge = b"{" + b" " * (web_app.MAX_BODY_BYTES + 1) + b"}"
    json_body = {"content-type": "application/json"}
    status, _, body = await http_call(
        port, "POST", "/chat.v1.ChatService/History", headers=json_body, body=huge
    )
    assert (status, json.loads(body)["code"]) == (413, "resource_exhausted")


async def test_the_same_origin_is_the_same_in_any_case(web_server: ChatServer) -> None:
    port = web_server.web_port
    shouting = {"host": f"LOCALHOST:{port}", "origin": f"http://localhost:{port}"}
    status, _, _ = await http_call(port, "GET", "/", headers=shouting)
    assert status == 200


@pytest.mark.parametrize("web_config", [_config(web_origins=("http://localhost:5173",))])
async def test_cross_origin_allowed_with_web_origin(web_server: ChatServer) -> None:
    port = web_server.web_port
    dev = {"origin": "http://localhost:5173"}
    status, headers, _ = await http_call(
        port,
        "OPTIONS",
        "/chat.v1.ChatService/Send",
        headers={**dev, "access-control-request-method": "POST"},
    )
    assert status == 204
    assert headers["access-control-allow-origin"] == "http://localhost:5173"
    assert "authorization" in headers["access-control-allow-headers"]
    status, headers, _ = await http_call(
        port,
        "POST",
        "/chat.v1.ChatService/History",
        headers={**dev, "content-type": "application/json"},
        body=b"{}",
    )
    assert status == 200
    assert headers["access-control-allow-origin"] == "http://localhost:5173"
    status, _, _ = await http_call(port, "GET", "/", headers={"origin": "http://other.example"})
    assert status == 403


@pytest.mark.parametrize(
    "web_config", [_config(web_origins=("http://localhost:5173", "https://chat.example:443"))]
)
async def test_an_allowed_origin_can_read_every_refusal(web_server: ChatServer) -> None:
    """Refusals made before the API is reached carried no CORS headers, so the allowed page
    could not read why; and a default port in --web-origin matches the Origin a browser sends,
    which never has one."""
    port, dev = web_server.web_port, {"origin": "http://localhost:5173"}
    json_body = {**dev, "content-type": "application/json"}
    refusals = [
        ("/chat.v1.ChatService/History?access_token=x", json_body, b"{}", 400),
        ("/chat.v1.ChatService/History", {**json_body, "x-pad": "a" * 20_000}, b"{}", 431),
        ("/chat.v1.ChatService/Send", json_body, b" " * (web_app.MAX_BODY_BYTES + 1), 413),
    ]
    for path, headers, body, expected in refusals:
        status, answered, text = await http_call(port, "POST", path, headers=headers, body=body)
        assert status == expected, text
        assert answered["access-control-allow-origin"] == "http://localhost:5173", path
    status, answered, _ = await http_call(
        port,
        "OPTIONS",
        "/chat.v1.ChatService/Send",
        headers={"origin": "https://chat.example", "access-control-request-method": "POST"},
    )
    assert status == 204
    assert answered["access-control-allow-origin"] == "https://chat.example"


async def test_drain_ends_a_web_stream_unavailable(
    web_server: ChatServer, web: ChatServiceClient
) -> None:
    stream = web.subscribe(pb.SubscribeRequest(room="lobby", name="gina"))
    await _registered(stream)
    stopping = asyncio.create_task(web_server.stop(2.0))
    with pytest.raises(ConnectError) as ended:
        await _drained(stream)
    assert ended.value.code == Code.UNAVAILABLE
    await stopping


async def test_grpc_web_unary_and_stream(web_server: ChatServer) -> None:
    address = f"http://127.0.0.1:{web_server.web_port}"
    async with ChatServiceClient(address, protocol=ProtocolType.GRPC_WEB) as client:
        sent = await client.send(pb.SendRequest(sender="hal", text="grpc-web", room="gw"))
        assert sent.message.text == "grpc-web"
        stream = client.subscribe(pb.SubscribeRequest(room="gw", name="ivy", history=10))
        texts, _ = await _texts(stream, 1)
        assert texts == ["grpc-web"]
        with pytest.raises(ConnectError) as refused:
            await client.send(pb.SendRequest(sender="hal", text="", room="gw"))
        assert refused.value.code == Code.INVALID_ARGUMENT


async def test_plain_grpc_on_the_web_port_is_pointed_elsewhere(web_server: ChatServer) -> None:
    status, headers, _ = await http_call(
        web_server.web_port,
        "POST",
        "/chat.v1.ChatService/History",
        headers={"content-type": "application/grpc"},
        body=b"\0\0\0\0\0",
    )
    assert status == 200
    assert headers["grpc-status"] == str(grpc.StatusCode.UNIMPLEMENTED.value[0])


def test_config_validates_the_web_settings() -> None:
    with pytest.raises(ValueError, match="web port"):
        ServerConfig(web_port=70000)
    # A port out of range, an empty one, a host with a space: accepted, they never matched a
    # browser's Origin, and its page was refused without a word.
    refused = ("http://x.example/path", "http://x:99999", "http://x:", "http://ex ample")
    for origin in (*refused, "http://[::1", "http://x:00080"):
        with pytest.raises(ValueError, match="--web-origin takes an origin"):
            ServerConfig(web_port=8080, web_origins=(origin,))
    # ... while a trailing slash, as copied from the address bar, was refused (origins are
    # matched without it).
    ServerConfig(web_port=8080, web_origins=("https://chat.example/", "http://[::1]:5173"))
    with pytest.raises(ValueError, match="plaintext"):
        ServerConfig(web_port=8080, host="0.0.0.0", auth_secret=SECRET)
    ServerConfig(web_port=8080, host="127.0.0.1", auth_secret=SECRET)


async def test_web_off_by_default_loads_nothing() -> None:
    async with ChatServer(_config(web_port=0)) as running:
        assert running.web_port == 0


# -- connections ------------------------------------------------------------------------------


@pytest.mark.parametrize("web_config", [_config(limits=Limits(rate=1, burst=1, request_rate=0))])
async def test_x_forwarded_for_is_not_the_client_s_address(web: ChatServiceClient) -> None:
    """Anyone can write the header: a fresh one per request escaped the per-address rate limit
    (uvicorn trusts it from 127.0.0.1 unless told not to)."""
    await web.send(pb.SendRequest(sender="a", text="one"), headers={"x-forwarded-for": "10.0.0.1"})
    with pytest.raises(ConnectError) as refused:
        await web.send(
            pb.SendRequest(sender="a", text="two"), headers={"x-forwarded-for": "10.0.0.2"}
        )
    assert refused.value.code == Code.RESOURCE_EXHAUSTED


async def _closed_by_server(reader: asyncio.StreamReader) -> bytes:
    """What the server wrote before closing the connection (bounded)."""
    async with asyncio.timeout(WAIT):
        return await reader.read()


@pytest.mark.parametrize(
    "sent",
    [b"", b"GET / HTTP/1.1\r\nHost: 127", b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\nGET /"],
    ids=["nothing", "half a head", "half the second head"],
)
async def test_a_connection_without_a_whole_request_head_is_closed(
    monkeypatch: pytest.MonkeyPatch, sent: bytes
) -> None:
    """uvicorn held such a connection for good: a thousand of them shut everyone out."""
    monkeypatch.setattr(web_connections, "HEAD_DEADLINE", 0.3)
    async with ChatServer(_config()) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.web_port)
        try:
            writer.write(sent)
            await writer.drain()
            answered = await _closed_by_server(reader)
        finally:
            writer.close()
    assert answered.count(b"HTTP/1.1 200") == sent.count(b"\r\n\r\n")  # only whole requests


async def test_one_address_may_hold_only_so_many_connections(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(web_connections, "CONNECTION_HEADROOM", 1)
    config = _config(limits=Limits(rate=0, request_rate=0, max_sessions_per_peer=2))
    async with ChatServer(config) as server:
        held = [await asyncio.open_connection("127.0.0.1", server.web_port) for _ in range(3)]
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.web_port)
            refusal = await _closed_by_server(reader)
            writer.close()
            assert refusal.startswith(b"HTTP/1.1 503")
            assert b"127.0.0.1 already has 3 connections open" in refusal
        finally:
            for _, other in held:
                other.close()
        # Once their closes are seen, the address may connect again (polled: no event).
        async with asyncio.timeout(10):
            while (await http_call(server.web_port, "GET", "/"))[0] != 200:  # noqa: ASYNC110
                await asyncio.sleep(0.05)


@pytest.mark.parametrize(
    ("peer", "address"),
    [
        ("ipv4:127.0.0.1:5000", "127.0.0.1"),
        ("ipv6:%5B::1%5D:5000", "::1"),
        ("ipv6:%5B::ffff:10.0.0.1%5D:1", "10.0.0.1"),
        ("unix:/run/chat.sock", "unix:/run/chat.sock"),
    ],
)
def test_an_address_is_spelled_alike_on_both_ports(peer: str, address: str) -> None:
    """gRPC names an IPv6 client `%5B::1%5D`, the web port `::1`: counted apart, one client
    had each per-address limit twice."""
    assert peers.grpc_peer(peer) == address
    assert peers.canonical_address(address.strip("[]")) == address
    assert peers.canonical_address("[::1]") == "::1"


async def test_a_stop_while_a_body_is_arriving_logs_no_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """uvicorn cancels such a request at the grace's end and logged it as an error."""
    async with ChatServer(_config(grace_period=1.0)) as server:
        _, writer = await asyncio.open_connection("127.0.0.1", server.web_port)
        writer.write(
            b"POST /chat.v1.ChatService/Send HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/grpc-web+proto\r\nContent-Length: 50\r\n\r\n\x00"
        )
        await writer.drain()
        await asyncio.sleep(0.2)  # the request is being read
        await asyncio.wait_for(server.stop(1.0), WAIT)
        writer.close()
    assert not [r for r in caplog.records if r.exc_info], caplog.text


@pytest.mark.parametrize(
    "web_config", [_config(limits=Limits(rate=0, request_rate=1, request_burst=1))]
)
async def test_a_web_subscribe_over_the_rate_says_when_to_retry(
    web: ChatServiceClient, web_server: ChatServer
) -> None:
    """As the gRPC port's refusal does, and as the web port's unary calls did already."""
    await web.history(pb.HistoryRequest(room="lobby"))  # the one request allowed now
    request = pb.SubscribeRequest(room="lobby", name="hasty").SerializeToString()
    frame = b"\0" + len(request).to_bytes(4, "big") + request
    status, _, body = await http_call(
        web_server.web_port,
        "POST",
        "/chat.v1.ChatService/Subscribe",
        headers={"content-type": "application/grpc-web+proto", "x-grpc-web": "1"},
        body=frame,
    )
    assert status == 200
    trailers = body[body.index(b"\x80") + 5 :].decode()
    assert re.search(r"grpc-status: ?8\b", trailers), trailers
    retry = re.search(r"retry-after-ms: ?(\d+)", trailers)
    assert retry is not None, trailers
    assert 0 < int(retry.group(1)) <= 1001


@pytest.mark.parametrize(
    ("method", "path", "content_type", "status", "says"),
    [
        ("POST", "History", "application/grpc-web-text", 415, "not grpc-web-text"),
        ("POST", "History", "text/plain", 415, "unsupported content type 'text/plain'"),
        ("POST", "Subscribe", "application/json", 415, "application/connect+proto for a stream"),
        ("POST", "Nope", "application/json", 404, "no method 'Nope' in chat.v1.ChatService"),
        ("GET", "History", "", 405, "GET is not allowed here: call a method with POST"),
    ],
)
async def test_a_request_the_api_cannot_route_is_told_why(
    web_server: ChatServer, method: str, path: str, content_type: str, status: int, says: str
) -> None:
    """connectrpc answered these with a bare status and an empty body."""
    headers = {"content-type": content_type} if content_type else {}
    body = b"{}" if method == "POST" else b""
    answered, response_headers, text = await http_call(
        web_server.web_port, method, f"/chat.v1.ChatService/{path}", headers=headers, body=body
    )
    assert answered == status
    assert response_headers["content-type"] == "application/json"
    assert says in json.loads(text)["message"]
    assert "content-security-policy" in response_headers


async def test_a_connect_stream_refused_before_the_api_ends_with_its_error(
    web_server: ChatServer,
) -> None:
    """The page's Subscribe (a Connect stream): a refusal made before connectrpc is reached is
    the stream's end-of-stream message in a 200, as the protocol has it (a 400 read as "HTTP
    400" by the client, the message lost)."""
    request = json.dumps({"room": "lobby", "name": "x"}).encode()
    status, headers, body = await http_call(
        web_server.web_port,
        "POST",
        "/chat.v1.ChatService/Subscribe?access_token=x",
        headers={"content-type": "application/connect+json", "connect-protocol-version": "1"},
        body=b"\0" + len(request).to_bytes(4, "big") + request,
    )
    assert status == 200
    assert headers["content-type"] == "application/connect+json"
    assert body[0] == 2  # end of stream
    assert int.from_bytes(body[1:5], "big") == len(body) - 5
    error = json.loads(body[5:])["error"]
    assert error["code"] == "invalid_argument"
    assert "tokens are never accepted in URLs" in error["message"]
