"""Wire framing of outgoing streams: a batch of pre-encoded events as few responses as fit, or
the article's one ChatMessage per response. Each event is encoded once per wire format (see
`grpcchat.core.models.Envelope`) however many streams carry it."""

from __future__ import annotations

from grpcchat.core.models import Envelope, Message
from grpcchat.wire import codec

# A batch is split into responses of at most this size (a single event may exceed it: the
# largest message is ~16 kB, far below the 4 MB default limit of gRPC clients).
MAX_RESPONSE_BYTES = 1 << 20


def frame_events(batch: list[Envelope]) -> list[bytes]:
    """A batch as few SubscribeResponse / ConnectResponse messages as fit under
    MAX_RESPONSE_BYTES each (gRPC clients refuse messages over 4 MB by default)."""
    frames = [envelope.encoded(codec.encode_event_frame) for envelope in batch]
    if sum(map(len, frames)) <= MAX_RESPONSE_BYTES:  # nearly always: every session, every batch
        return [b"".join(frames)] if frames else []
    responses: list[bytes] = []
    run: list[bytes] = []
    size = 0
    for frame in frames:
        if run and size + len(frame) > MAX_RESPONSE_BYTES:
            responses.append(b"".join(run))
            run, size = [], 0
        run.append(frame)
        size += len(frame)
    responses.append(b"".join(run))
    return responses


def each_chat_message(batch: list[Envelope]) -> list[bytes]:
    """The article's stream carries one ChatMessage per response, and only new chat lines: no
    relation entries (an edit or a reaction is not a new line for its clients), no notices."""
    return [
        envelope.encoded(codec.encode_chat_message)
        for envelope in batch
        if isinstance(envelope.event, Message) and envelope.event.relation is None
    ]
