"""Read markers in JetStream: one stream beside the history's, `<stream>_READ`, one subject per
user and room, `<stream>.read.<user>.<room>` (each percent-encoded like a room's subject),
keeping only each subject's latest message (`max_msgs_per_subject` 1): the marker.

A marker's payload is `<epoch> <seq>`: one left by a history the stream no longer holds (the
stream was deleted and made again: a new epoch) reads as 0. Markers move forward only, by
compare-and-set: a publish names the subject's last stream seq it read
(`Nats-Expected-Last-Subject-Sequence`), so of two sessions moving one marker at once, the
second reads the first's marker and tries again.

Bounded like the history (the contract's "Markers are bounded"): the stream keeps at most
`retention.max_markers` messages, discarding the oldest (`max_msgs`, `discard` old: with one
message per subject, the least recently moved marker), and none older than `retention.max_age`
(`max_age`; JetStream refuses less than 100 ms, so never less than MIN_AGE). JetStream deletes
expired ones on its own timer, so a marker is also judged by the time JetStream stored it: one
stored longer than `max_age` ago reads 0. A stream made before these limits, or under another
retention, is updated to them when a store opens it.

Every method may raise nats-py's errors; callers turn them into StoreError (`connection.errors`).
"""

from __future__ import annotations

from datetime import UTC, datetime

import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, StorageType, StreamConfig

from grpcchat.core.errors import StoreError
from grpcchat.core.history import Retention
from grpcchat.store.nats import codec, streams

ATTEMPTS = 20
# Seconds: the shortest `max_age` the stream is given (JetStream refuses under 100 ms); a
# shorter retention is still exact, by the time each marker was stored.
MIN_AGE = 1.0


class Markers:
    def __init__(self, js: JetStreamContext, stream: str, epoch: str, retention: Retention) -> None:
        self._js = js
        self.stream = f"{stream}_READ"
        self._prefix = f"{stream}.read."
        self._epoch = epoch
        self._max_age = retention.max_age
        self._max_markers = retention.max_markers

    async def open(self, replicas: int) -> None:
        """Create the stream if it is missing; give it the retention's limits if it has
        others (made before markers had any, or under another retention)."""
        max_age = max(self._max_age.total_seconds(), MIN_AGE)
        try:
            info = await self._js.stream_info(self.stream)
        except nats.js.errors.NotFoundError:
            config = StreamConfig(
                name=self.stream,
                description="grpcchat read markers",
                subjects=[f"{self._prefix}>"],
                storage=StorageType.FILE,
                num_replicas=replicas,
                max_msgs_per_subject=1,
                max_msgs=self._max_markers,
                max_age=max_age,
                discard=DiscardPolicy.OLD,
                allow_direct=True,
            )
            info = await streams.add_or_find(self._js, config)
        config = info.config
        if (
            config.max_msgs != self._max_markers
            or abs((config.max_age or 0.0) - max_age) > 0.001
            or config.discard != DiscardPolicy.OLD
            # As the history's: a marker on one node is a join failing while it is down.
            or config.num_replicas != replicas
        ):
            # JetStream keeps no dedup window longer than `max_age` (markers use none).
            window = min(config.duplicate_window or max_age, max_age)
            await self._js.update_stream(
                config.evolve(
                    max_msgs=self._max_markers,
                    max_age=max_age,
                    discard=DiscardPolicy.OLD,
                    duplicate_window=window,
                    num_replicas=replicas,
                )
            )

    def subject(self, user: str, room: str) -> str:
        return f"{self._prefix}{codec.room_token(user)}.{codec.room_token(room)}"

    async def get(self, user: str, room: str) -> tuple[int, int]:
        """The marker (0 if none, or expired) and the stream seq of the message holding it (0
        if none)."""
        try:
            raw = await self._js.get_last_msg(self.stream, self.subject(user, room), direct=True)
        except nats.js.errors.NotFoundError:
            return 0, 0
        epoch, _, seq = (raw.data or b"").decode(errors="replace").partition(" ")
        marker = int(seq) if epoch == self._epoch and seq.isdigit() else 0
        if raw.time is not None and raw.time < datetime.now(UTC) - self._max_age:
            marker = 0  # expired: JetStream has yet to delete it
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
