"""Read markers in JetStream: one stream beside the history's, `<stream>_READ`, one subject per
user and room, `<stream>.read.<user>.<room>` (each percent-encoded like a room's subject),
keeping only each subject's latest message (`max_msgs_per_subject` 1): the marker.

A marker's payload is `<epoch> <seq>`: one left by a history the stream no longer holds (the
stream was deleted and made again: a new epoch) reads as 0. Markers move forward only, by
compare-and-set: a publish names the subject's last stream seq it read
(`Nats-Expected-Last-Subject-Sequence`), so of two sessions moving one marker at once, the
second reads the first's marker and tries again. Not subject to the history's retention.

Every method may raise nats-py's errors; callers turn them into StoreError (`connection.errors`).
"""

from __future__ import annotations

import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import StorageType, StreamConfig

from grpcchat.core.errors import StoreError
from grpcchat.store.nats import codec

ATTEMPTS = 20


class Markers:
    def __init__(self, js: JetStreamContext, stream: str, epoch: str) -> None:
        self._js = js
        self.stream = f"{stream}_READ"
        self._prefix = f"{stream}.read."
        self._epoch = epoch

    async def open(self, replicas: int) -> None:
        """Create the stream if it is missing."""
        try:
            await self._js.stream_info(self.stream)
            return
        except nats.js.errors.NotFoundError:
            pass
        config = StreamConfig(
            name=self.stream,
            description="grpcchat read markers",
            subjects=[f"{self._prefix}>"],
            storage=StorageType.FILE,
            num_replicas=replicas,
            max_msgs_per_subject=1,
            allow_direct=True,
        )
        try:
            await self._js.add_stream(config)
        except nats.js.errors.BadRequestError:
            await self._js.stream_info(self.stream)  # another server created it first

    def subject(self, user: str, room: str) -> str:
        return f"{self._prefix}{codec.room_token(user)}.{codec.room_token(room)}"

    async def get(self, user: str, room: str) -> tuple[int, int]:
        """The marker (0 if none) and the stream seq of the message holding it (0 if none)."""
        try:
            raw = await self._js.get_last_msg(self.stream, self.subject(user, room), direct=True)
        except nats.js.errors.NotFoundError:
            return 0, 0
        epoch, _, seq = (raw.data or b"").decode(errors="replace").partition(" ")
        marker = int(seq) if epoch == self._epoch and seq.isdigit() else 0
        return marker, raw.seq or 0

    async def advance(self, user: str, room: str, seq: int) -> int:
        """Move the marker up to `seq` (never back); the marker afterwards."""
        subject = self.subject(user, room)
        for _ in range(ATTEMPTS):
            marker, stream_seq = await self.get(user, room)
            if seq <= marker:
                return marker
            headers = {codec.EXPECTED_LAST: str(stream_seq)}
            try:
                await self._js.publish(
                    subject, f"{self._epoch} {seq}".encode(), stream=self.stream, headers=headers
                )
            except nats.js.errors.BadRequestError as exc:
                if exc.err_code == codec.WRONG_LAST_SEQUENCE:
                    continue  # moved meanwhile: look again
                raise
            return seq
        raise StoreError(f"too many concurrent moves of {user!r}'s marker in {room!r}: try again")
