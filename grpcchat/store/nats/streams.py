"""Creating a JetStream stream that several servers may create at the same moment."""

from __future__ import annotations

import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import StreamConfig, StreamInfo


async def add_or_find(js: JetStreamContext, config: StreamConfig) -> StreamInfo:
    """Create the stream `config` names, or, if another server created it first, find it. A
    refusal with no stream to find had another reason (say, another stream already takes its
    subjects): that refusal is raised, not the stream's absence."""
    try:
        return await js.add_stream(config)
    except nats.js.errors.BadRequestError as refused:
        assert config.name is not None
        try:
            return await js.stream_info(config.name)
        except nats.js.errors.NotFoundError:
            raise refused from None
