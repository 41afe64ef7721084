"""A session stream's requests on their way out: sends that wait together go out as one
`ConnectRequest.sends`, so the server reads one message for all of them (and still applies and
acknowledges each as if it had been written alone)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

from grpcchat.gen.chat.v1 import chat_service_pb2 as pb
from grpcchat.wire.codec import PACKED_SENDS_BYTES


async def packed_requests(
    queue: asyncio.Queue[pb.ConnectRequest | None], may_pack: Callable[[], bool]
) -> AsyncIterator[pb.ConnectRequest]:
    """The queue's requests in order, until None. While `may_pack()`, a send followed by more
    sends already waiting goes out with them as one `sends` request of about PACKED_SENDS_BYTES
    at most; nothing ever waits for company, so a lone send goes out at once."""
    ahead: list[pb.ConnectRequest | None] = []  # taken from the queue, not a send: next
    while True:
        request = ahead.pop() if ahead else await queue.get()
        if request is None:
            return
        if request.WhichOneof("action") == "send" and not queue.empty() and may_pack():
            sends = [request.send]
            size = request.send.ByteSize()
            while size < PACKED_SENDS_BYTES and not queue.empty():
                following = queue.get_nowait()
                if following is None or following.WhichOneof("action") != "send":
                    ahead.append(following)
                    break
                sends.append(following.send)
                size += following.send.ByteSize()
            if len(sends) > 1:
                request = pb.ConnectRequest(sends=pb.SendBatch(sends=sends))
        yield request
