"""Messages sent on a session stream and not yet acknowledged, by key.

Each waits for its `SendAck`; when the stream is lost, every one still waiting is written
again, with the same key, on the next stream, so a reconnect never loses or doubles a message
(the server answers a repeated key with the original, as for a unary retry).
"""

from __future__ import annotations

import asyncio

from grpcchat.core.models import SendAck
from grpcchat.gen.chat.v1 import chat_service_pb2 as pb


class Outbox:
    def __init__(self) -> None:
        self._waiting: dict[str, tuple[pb.ConnectRequest, asyncio.Future[SendAck]]] = {}

    def __len__(self) -> int:
        return len(self._waiting)

    def add(self, request: pb.SendRequest) -> tuple[pb.ConnectRequest, asyncio.Future[SendAck]]:
        """Wait for the ack of `request` (whose key must be new); the request to write."""
        future: asyncio.Future[SendAck] = asyncio.get_running_loop().create_future()
        framed = pb.ConnectRequest(send=request)
        self._waiting[request.key] = (framed, future)
        return framed, future

    def forget(self, key: str) -> None:
        self._waiting.pop(key, None)

    def unanswered(self) -> list[pb.ConnectRequest]:
        """What to write again on a new stream, in the order it was first written."""
        return [framed for framed, _ in self._waiting.values()]

    def answer(self, ack: SendAck) -> None:
        entry = self._waiting.pop(ack.key, None)
        if entry is not None and not entry[1].done():
            entry[1].set_result(ack)

    def fail_all(self, error: Exception) -> None:
        for _, future in self._waiting.values():
            if not future.done():
                future.set_exception(error)
        self._waiting.clear()
