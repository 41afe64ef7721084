"""Messages sent on a session stream and not yet over, by key, in the order first written.

Each waits for its `SendAck`. When the stream is lost, every one not over is written again, with
the same key, on the next stream, in the order first written, so a reconnect never loses, doubles
or reorders a message (the server answers a repeated key with the original, as for a unary
retry). A send refused for now (over the rate) keeps its place while it waits to be written
again: the next stream gets it before the ones written after it, and a server holds those behind
it (taken out and put back at the end, it came after them on another stream or server).
"""

from __future__ import annotations

import asyncio

from grpcchat.core.models import SendAck
from grpcchat.gen.chat.v1 import chat_service_pb2 as pb


class Outbox:
    def __init__(self) -> None:
        self._sends: dict[str, tuple[pb.ConnectRequest, asyncio.Future[SendAck]]] = {}

    def __len__(self) -> int:
        return len(self._sends)

    def __contains__(self, key: str) -> bool:
        return key in self._sends

    def add(self, request: pb.SendRequest) -> tuple[pb.ConnectRequest, asyncio.Future[SendAck]]:
        """Keep `request` (whose key must be new) until `settle`; the request to write, and
        its next answer."""
        future: asyncio.Future[SendAck] = asyncio.get_running_loop().create_future()
        framed = pb.ConnectRequest(send=request)
        self._sends[request.key] = (framed, future)
        return framed, future

    def again(self, key: str) -> asyncio.Future[SendAck]:
        """The next answer to the send under `key`, written again, in the place it had."""
        framed, _ = self._sends[key]
        future: asyncio.Future[SendAck] = asyncio.get_running_loop().create_future()
        self._sends[key] = (framed, future)  # an existing key keeps its place in the dict
        return future

    def settle(self, key: str) -> None:
        """The send under `key` is over (accepted, refused for good, or given up)."""
        self._sends.pop(key, None)

    def unanswered(self) -> list[pb.ConnectRequest]:
        """What to write again on a new stream: every send not over, in the order first
        written."""
        return [framed for framed, _ in self._sends.values()]

    def answer(self, ack: SendAck) -> None:
        """The answer to a send: to its caller, if it is waiting for one (a send written again
        on a new stream while its caller waited out a refusal is answered then too: it will
        be written once more, and its key answered with the original)."""
        entry = self._sends.get(ack.key)
        if entry is not None and not entry[1].done():
            entry[1].set_result(ack)

    def fail_all(self, error: Exception) -> None:
        for _, future in self._sends.values():
            if not future.done():
                future.set_exception(error)
        self._sends.clear()
