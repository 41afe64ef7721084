"""Stand-ins for the article's Go server and Go client, written independently of `grpcchat`.

Nothing here imports from `grpcchat`: the article's contract (`chat.v1.ChatService/Chat`, a
bidirectional stream of `ChatMessage{sender=1, text=2, sent_at=3}`) is rebuilt from a
hand-written FileDescriptorProto in a private descriptor pool, and the stream is driven through
grpc's generic handlers and `channel.stream_stream` with our own serializers. So a change to the
project's generated code or proto cannot silently change what these peers speak.

- `V1Server` behaves like the article's `server/main.go`: Chat only (Send and Subscribe are
  UNIMPLEMENTED), streams kept in a map, every received message broadcast *as received* (no
  stamping) to all streams including the sender under one lock, send errors ignored, and the
  handler returns (status OK) when the client half-closes.
- `V1Client` behaves like `client/main.go`: one Chat stream, written and read at the same time,
  each message carrying the client's own `sent_at`. Fields it does not know (the project's
  id=4, room=5, seq=6) are ignored, as Go's protobuf runtime ignores them.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, timestamp_pb2
from google.protobuf import message as pb_message
from google.protobuf.unknown_fields import UnknownFieldSet
from grpc import aio

SERVICE = "chat.v1.ChatService"
CHAT_METHOD = f"/{SERVICE}/Chat"
# Bound on every wait in these helpers, so a broken peer fails a test instead of hanging it.
DEFAULT_WAIT = 5.0


def _article_file() -> descriptor_pb2.FileDescriptorProto:
    """proto/chat/v1/chat.proto exactly as the article publishes it."""
    proto = descriptor_pb2.FileDescriptorProto(
        name="chat/v1/chat.proto",
        package="chat.v1",
        syntax="proto3",
        dependency=["google/protobuf/timestamp.proto"],
    )
    proto.options.go_package = "./chat/v1;chatv1"
    message = proto.message_type.add(name="ChatMessage")
    string = descriptor_pb2.FieldDescriptorProto.TYPE_STRING
    nested = descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE
    optional = descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL
    message.field.add(name="sender", number=1, type=string, label=optional, json_name="sender")
    message.field.add(name="text", number=2, type=string, label=optional, json_name="text")
    message.field.add(
        name="sent_at",
        number=3,
        type=nested,
        type_name=".google.protobuf.Timestamp",
        label=optional,
        json_name="sentAt",
    )
    service = proto.service.add(name="ChatService")
    service.method.add(
        name="Chat",
        input_type=".chat.v1.ChatMessage",
        output_type=".chat.v1.ChatMessage",
        client_streaming=True,
        server_streaming=True,
    )
    return proto


# A private pool: the project's own chat.v1.ChatMessage lives in the default pool, and the two
# definitions must not meet.
_POOL = descriptor_pool.DescriptorPool()
_timestamp_file = descriptor_pb2.FileDescriptorProto()
timestamp_pb2.DESCRIPTOR.CopyToProto(_timestamp_file)
_POOL.Add(_timestamp_file)
_POOL.Add(_article_file())
ChatMessage: Any = message_factory.GetMessageClass(
    _POOL.FindMessageTypeByName("chat.v1.ChatMessage")
)


def new_chat_message(sender: str, text: str, sent_at: datetime | None = None) -> Any:
    """A ChatMessage as the Go client builds it (`SentAt: timestamppb.Now()` by default)."""
    moment = datetime.now(UTC) if sent_at is None else sent_at
    micros = round(moment.timestamp() * 1_000_000)
    message = ChatMessage(sender=sender, text=text)
    message.sent_at.seconds = micros // 1_000_000
    message.sent_at.nanos = (micros % 1_000_000) * 1000
    return message


def encode(message: pb_message.Message) -> bytes:
    return message.SerializeToString()


@dataclass(frozen=True, slots=True)
class V1Message:
    """What the article's client sees of a ChatMessage; `ignored_fields` lists the field numbers
    it does not know (and so ignores) that were present on the wire."""

    sender: str
    text: str
    sent_at: datetime | None
    ignored_fields: frozenset[int] = field(default=frozenset())


def decode(data: bytes) -> V1Message:
    message = ChatMessage.FromString(data)
    sent_at = None
    if message.HasField("sent_at"):
        seconds = message.sent_at.seconds + message.sent_at.nanos / 1e9
        sent_at = datetime.fromtimestamp(seconds, UTC)
    unknown = frozenset(item.field_number for item in UnknownFieldSet(message))
    return V1Message(message.sender, message.text, sent_at, unknown)


# --------------------------------------------------------------------------------------------
# The article's server


class _ArticleChatServer:
    """`type chatServer struct { mu sync.Mutex; clients map[string]ChatService_ChatServer }`."""

    def __init__(self, on_message: Callable[[str, str], None]) -> None:
        self._mu = asyncio.Lock()
        self._clients: dict[str, aio.ServicerContext[Any, Any]] = {}
        self._on_message = on_message

    async def chat(
        self, requests: AsyncIterator[Any], context: aio.ServicerContext[Any, Any]
    ) -> None:
        stream_id = f"{id(context):#x}"  # fmt.Sprintf("%p", stream)
        async with self._mu:
            self._clients[stream_id] = context
        try:
            # Recv until io.EOF (the client half-closed): then return nil, ending the call OK.
            # Any other error ends the handler with that error, here by the exception.
            async for message in requests:
                self._on_message(message.sender, message.text)  # log.Printf("🟢 [%s]: ...")
                await self._broadcast(message)
        finally:
            async with self._mu:
                del self._clients[stream_id]

    async def _broadcast(self, message: Any) -> None:
        async with self._mu:
            for stream in list(self._clients.values()):
                # c.Send(msg): the article ignores its error.
                with contextlib.suppress(Exception):
                    await stream.write(message)


class V1Server:
    """The article's Go server on 127.0.0.1:<free port>, on its own event loop in a thread, so
    it runs whether the test's loop is busy, blocked on a subprocess, or absent.

    `with V1Server() as v1: ... v1.addr ...`; `v1.log` lists (sender, text) of every message
    received, like the Go server's log lines.
    """

    def __init__(self) -> None:
        self.port = 0
        self.log: list[tuple[str, str]] = []
        self._started = threading.Event()
        self._failure: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="v1-server", daemon=True)

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self._thread.start()
        if not self._started.wait(DEFAULT_WAIT * 2):
            raise RuntimeError("the v1 server did not start in time")
        if self._failure is not None:
            raise RuntimeError("the v1 server failed to start") from self._failure

    def stop(self) -> None:
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(stop.set)
        self._thread.join(DEFAULT_WAIT * 2)
        if self._thread.is_alive():
            raise RuntimeError("the v1 server did not stop in time")

    def __enter__(self) -> V1Server:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as error:  # reported by start(); never lost silently
            self._failure = error
            self._started.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        server = aio.server()
        servicer = _ArticleChatServer(lambda sender, text: self.log.append((sender, text)))
        handlers = {
            "Chat": grpc.stream_stream_rpc_method_handler(
                servicer.chat,
                request_deserializer=ChatMessage.FromString,
                response_serializer=encode,
            )
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        self.port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        self._started.set()
        try:
            await self._stop.wait()
        finally:
            await server.stop(0)


# --------------------------------------------------------------------------------------------
# The article's client


class StreamEnded(AssertionError):
    """The Chat stream ended while a message was expected."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"stream ended with {code.name}: {details!r}")
        self.code = code
        self.details = details


class V1Client:
    """One Chat stream, as `client/main.go` opens it. Use inside a running event loop:

    `async with V1Client(addr) as alice: await alice.send("alice", "hi"); await alice.recv()`
    """

    def __init__(self, addr: str) -> None:
        self.addr = addr
        self._channel = aio.insecure_channel(addr)
        chat = self._channel.stream_stream(
            CHAT_METHOD, request_serializer=encode, response_deserializer=decode
        )
        self._call: Any = chat()

    async def __aenter__(self) -> V1Client:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        self._call.cancel()
        await self._channel.close(None)

    async def send(self, sender: str, text: str, sent_at: datetime | None = None) -> None:
        """`stream.Send(&chatv1.ChatMessage{Sender: name, Text: text, SentAt: ...})`."""
        await self._call.write(new_chat_message(sender, text, sent_at))

    async def write(self, message: Any) -> None:
        """Write a ChatMessage as built: one carrying fields the contract lacks (as unknown
        fields) is what a client that sets them sends."""
        await self._call.write(message)

    async def close_send(self) -> None:
        """What typing `exit` does: half-close; the server's Recv sees io.EOF."""
        await self._call.done_writing()

    async def recv(self, timeout: float = DEFAULT_WAIT) -> V1Message:
        """The next message; StreamEnded if the stream ends instead."""
        try:
            message = await asyncio.wait_for(self._call.read(), timeout)
        except grpc.RpcError as error:
            raise StreamEnded(error.code(), error.details() or "") from None
        if message is aio.EOF:
            raise StreamEnded(await self._call.code(), await self._call.details() or "")
        assert isinstance(message, V1Message)
        return message

    async def recv_until(
        self, sender: str, text: str, timeout: float = DEFAULT_WAIT
    ) -> list[V1Message]:
        """Messages up to and including the first from `sender` with `text`."""
        deadline = asyncio.get_running_loop().time() + timeout
        seen: list[V1Message] = []
        while True:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise TimeoutError(f"no {sender}: {text!r} within {timeout}s; got {seen}")
            message = await self.recv(remaining)
            seen.append(message)
            if message.sender == sender and message.text == text:
                return seen

    async def join(self, name: str, timeout: float = DEFAULT_WAIT) -> list[V1Message]:
        """Say hello and wait for the echo: once it arrives the server has this stream in its
        broadcast set (both the article's server and ours echo to the sender). Returns what
        arrived before the echo."""
        hello = f"{name} joined"
        await self.send(name, hello)
        return (await self.recv_until(name, hello, timeout))[:-1]

    async def finish(
        self, timeout: float = DEFAULT_WAIT
    ) -> tuple[grpc.StatusCode, str, list[V1Message]]:
        """Read to the end of the stream: its status code, details and the messages read."""
        seen: list[V1Message] = []
        async with asyncio.timeout(timeout):
            while True:
                try:
                    seen.append(await self.recv(timeout))
                except StreamEnded as ended:
                    return ended.code, ended.details, seen
