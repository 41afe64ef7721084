"""Framing a batch of events into responses: one response while the batch fits, split in order
at MAX_RESPONSE_BYTES otherwise (gRPC clients refuse messages over 4 MB by default)."""

from __future__ import annotations

from datetime import UTC, datetime

from grpcchat.core.models import Envelope, Message
from grpcchat.gen.chat.v1 import chat_service_pb2 as pb
from grpcchat.server.framing import MAX_RESPONSE_BYTES, frame_events


def envelopes(count: int, text: str) -> list[Envelope]:
    now = datetime.now(UTC)
    return [Envelope(Message(f"m{n}", "lobby", "ann", text, now, seq=n + 1)) for n in range(count)]


def seqs_of(responses: list[bytes]) -> list[int]:
    seqs: list[int] = []
    for response in responses:
        parsed = pb.ConnectResponse.FromString(response)
        seqs += [event.message.seq for event in parsed.events]
    return seqs


def test_a_batch_that_fits_is_one_response_and_no_batch_is_none() -> None:
    responses = frame_events(envelopes(50, "hi"))
    assert len(responses) == 1
    assert seqs_of(responses) == list(range(1, 51))
    assert frame_events([]) == []


def test_a_batch_past_the_limit_is_split_in_order_under_it() -> None:
    batch = envelopes(150, "é" * 4_000)  # ~8 kB each: ~1.2 MB in all
    responses = frame_events(batch)
    assert len(responses) == 2
    assert all(len(response) <= MAX_RESPONSE_BYTES for response in responses)
    assert seqs_of(responses) == list(range(1, 151))
