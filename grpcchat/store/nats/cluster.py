"""`NatsCluster`: who is where, and direct messages, across the nodes of one stream, over core
NATS (the `Cluster` of `grpcchat.core.cluster`). None of it is stored.

Subjects, outside the stream's (JetStream keeps none of this):
- `_grpcchat.<stream>.presence`, one subscription per node. A node publishes its members'
  changes, `{"node", "v", "changes": [[room, name, joined], ...]}` (`v` counts the node's
  announcements), a beat `{"node", "v"}` every `beat` seconds, `{"node", "hello": true}` when it
  starts (every node answers with a beat, so it learns the others at once) and
  `{"node", "bye": true}` when it stops.
- `_grpcchat.<stream>.roster.<node>`: a node's whole picture on request, in parts
  (`{"v", "rooms": {room: [names]}, "last"}`) of at most PART_NAMES names each.
- `_grpcchat.<stream>.direct`: direct messages, delivered by every node to its sessions of
  either name.

A node that is new, or whose `v` skips (it announced while this node could not hear: a
reconnect), is asked for its whole picture; a node not heard from for `ttl` seconds is
forgotten and its members leave. Why not a KV bucket with a TTL, one key per member: JetStream
does not tell watchers about entries that expire, so every node would have to scan for them,
and a node would rewrite every key it holds once per TTL; here it sends one beat.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from grpcchat.core.cluster import LocalNode, MemberChange
from grpcchat.core.errors import StoreError
from grpcchat.core.models import Message
from grpcchat.store.nats import codec
from grpcchat.store.nats.connection import NATS_ERRORS, reason

log = logging.getLogger("grpcchat.store")

# A node beats this often; one not heard from for TTL seconds is gone (its members leave).
BEAT = 2.0
TTL = 3 * BEAT
# Changes per announcement, and names per part of a whole picture (NATS's payload limit is
# 1 MB by default; a name is at most 64 characters).
CHANGES_PER_MESSAGE = 1_000
PART_NAMES = 2_000
# How long a node waits for another's whole picture before trying again at its next beat.
SYNC_TIMEOUT = 5.0


class NatsCluster:
    def __init__(self, nc: Client, stream: str, *, beat: float = BEAT, ttl: float = TTL) -> None:
        self._nc = nc
        self.node_id = uuid.uuid4().hex[:16]
        base = f"_grpcchat.{stream}"
        self._presence = f"{base}.presence"
        self._roster = f"{base}.roster."
        self._direct = f"{base}.direct"
        self._beat = beat
        self._ttl = ttl
        self._node: LocalNode | None = None
        self._version = 0
        self._pending: list[MemberChange] = []
        self._flush_scheduled = False
        # Of every other node: the last `v` applied, when it was last heard, and, while its
        # whole picture is being asked for, the announcements that arrive meanwhile.
        self._versions: dict[str, int] = {}
        self._heard: dict[str, float] = {}
        self._syncing: dict[str, list[tuple[int, list[MemberChange]]]] = {}
        self._tasks: set[asyncio.Future[Any]] = set()
        self._closed = asyncio.Event()

    # -- the Cluster protocol ---------------------------------------------------------------

    async def share(self, node: LocalNode) -> None:
        self._node = node
        subscriptions: list[Subscription] = []
        try:
            try:
                for subject, handler in (
                    (self._presence, self._on_presence),
                    (self._roster + self.node_id, self._on_roster_request),
                    (self._direct, self._on_direct),
                ):
                    subscriptions.append(await self._nc.subscribe(subject, cb=handler))
                await self._publish(self._presence, {"node": self.node_id, "hello": True})
                while not self._closed.is_set():
                    await self._publish(self._presence, {"node": self.node_id, "v": self._version})
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._closed.wait(), self._beat)
                    self._forget_silent()
            except NATS_ERRORS as exc:
                if self._closed.is_set():
                    return
                raise StoreError(f"presence on NATS failed: {reason(exc)}") from None
        finally:
            for subscription in subscriptions:
                with contextlib.suppress(*NATS_ERRORS):
                    await subscription.unsubscribe()

    def announce(self, changes: list[MemberChange]) -> None:
        self._pending.extend(changes)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def send_direct(self, message: Message, key: str) -> None:
        payload = {
            "node": self.node_id,
            "id": message.id,
            "sender": message.sender,
            "recipient": message.recipient,
            "text": message.text,
            "at": codec.to_us(message.sent_at),
            "action": message.action,
            "key": key,
        }
        self._spawn(self._publish(self._direct, payload))

    async def close(self) -> None:
        """Say goodbye (the other nodes forget this one at once) and stop."""
        if self._closed.is_set():
            return
        self._closed.set()
        try:
            if self._node is not None and not self._nc.is_closed:
                with contextlib.suppress(*NATS_ERRORS):
                    self._flush()
                    await self._publish(self._presence, {"node": self.node_id, "bye": True})
                    await self._nc.flush(timeout=1)
        finally:  # cut short too (the store closes within its own time)
            for task in self._tasks:
                task.cancel()

    # -- sending ----------------------------------------------------------------------------

    def _flush(self) -> None:
        """Publish the changes announced since the last flush, numbered in order."""
        self._flush_scheduled = False
        pending, self._pending = self._pending, []
        for start in range(0, len(pending), CHANGES_PER_MESSAGE):
            self._version += 1
            chunk = pending[start : start + CHANGES_PER_MESSAGE]
            payload = {
                "node": self.node_id,
                "v": self._version,
                "changes": [[c.room, c.name, c.joined] for c in chunk],
            }
            self._spawn(self._publish(self._presence, payload))

    async def _publish(self, subject: str, payload: dict[str, Any], reply: str = "") -> None:
        data = json.dumps(payload, separators=(",", ":")).encode()
        await self._nc.publish(subject, data, reply=reply)

    def _spawn(self, publishing: Any) -> None:
        """Publish without waiting: nats-py queues it at once, in call order."""
        task = asyncio.ensure_future(publishing)
        self._tasks.add(task)
        task.add_done_callback(self._published)

    def _published(self, task: asyncio.Future[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # Lost with the connection: the others see the skipped `v` and ask again.
            log.warning(
                "could not tell the other nodes: %s",
                task.exception(),
                extra={"event": "presence_failed"},
            )

    # -- receiving --------------------------------------------------------------------------

    async def _on_presence(self, msg: Msg) -> None:
        node = self._node
        payload = _decode(msg)
        other = payload.get("node") if payload is not None else None
        if node is None or payload is None or not isinstance(other, str):
            return
        if other == self.node_id:
            return
        if payload.get("bye"):
            self._forget(other)
            return
        self._heard[other] = time.monotonic()
        if payload.get("hello"):
            self._spawn(self._publish(self._presence, {"node": self.node_id, "v": self._version}))
            return
        version = payload.get("v")
        if not isinstance(version, int):
            return
        changes = payload.get("changes")
        if changes is None:  # a beat
            if other not in self._syncing and self._versions.get(other) != version:
                self._sync(other)
            return
        parsed = _changes(changes)
        if other in self._syncing:
            self._syncing[other].append((version, parsed))
        elif self._versions.get(other) == version - 1:
            self._versions[other] = version
            node.remote_changed(node.roster.apply(other, parsed))
        elif other not in self._versions or version > self._versions[other]:
            self._sync(other)  # new, or one was missed
        # else: in the whole picture already (sent after it was asked for, arriving late)

    def _sync(self, other: str) -> None:
        self._syncing[other] = []
        self._spawn(self._fetch_roster(other))

    async def _fetch_roster(self, other: str) -> None:
        """Ask `other` for its whole picture, then apply what it announced meanwhile."""
        node = self._node
        assert node is not None
        rooms: dict[str, list[str]] = {}
        version: int | None = None
        inbox = self._nc.new_inbox()
        try:
            subscription = await self._nc.subscribe(inbox)
            try:
                await self._publish(self._roster + other, {"node": self.node_id}, reply=inbox)
                async with asyncio.timeout(SYNC_TIMEOUT):
                    while True:
                        part = _decode(await subscription.next_msg(timeout=SYNC_TIMEOUT))
                        if part is None or not isinstance(part.get("v"), int):
                            return
                        for room, names in dict(part.get("rooms") or {}).items():
                            rooms.setdefault(str(room), []).extend(str(n) for n in names)
                        if part.get("last"):
                            version = int(part["v"])
                            break
            finally:
                with contextlib.suppress(*NATS_ERRORS):
                    await subscription.unsubscribe()
        except NATS_ERRORS:
            return  # asked again at its next beat
        finally:
            meanwhile = self._syncing.pop(other, [])
        if version is None or self._closed.is_set():
            return
        changes = node.roster.replace(other, rooms)
        for later, announced in sorted(meanwhile, key=lambda item: item[0]):
            if later == version + 1:
                version = later
                changes += node.roster.apply(other, announced)
        self._versions[other] = version
        self._heard[other] = time.monotonic()
        node.remote_changed(changes)

    async def _on_roster_request(self, msg: Msg) -> None:
        node = self._node
        if node is None or not msg.reply:
            return
        self._flush()  # the picture includes every change, so the next `v` starts after it
        parts: list[dict[str, list[str]]] = [{}]
        size = 0
        for room, names in node.members().items():
            for start in range(0, max(len(names), 1), PART_NAMES):
                chunk = names[start : start + PART_NAMES]
                if size + len(chunk) > PART_NAMES:
                    parts.append({})
                    size = 0
                parts[-1].setdefault(room, []).extend(chunk)
                size += len(chunk)
        for index, rooms in enumerate(parts):
            last = index == len(parts) - 1
            payload = {"v": self._version, "rooms": rooms, "last": last}
            await self._publish(msg.reply, payload)

    async def _on_direct(self, msg: Msg) -> None:
        node = self._node
        payload = _decode(msg)
        if node is None or payload is None or payload.get("node") == self.node_id:
            return
        try:
            message = Message(
                id=str(payload["id"]),
                room="",
                sender=str(payload["sender"]),
                text=str(payload["text"]),
                sent_at=codec.from_us(int(payload["at"])),
                seq=0,
                recipient=str(payload["recipient"]),
                action=bool(payload.get("action")),
            )
        except (KeyError, TypeError, ValueError, OverflowError):
            log.warning(
                "ignored a malformed direct message from another node",
                extra={"event": "direct_message_ignored"},
            )
            return
        node.remote_direct(message, str(payload.get("key") or ""))

    # -- nodes that go away -----------------------------------------------------------------

    def _forget_silent(self) -> None:
        now = time.monotonic()
        for other, heard in list(self._heard.items()):
            if now - heard > self._ttl:
                log.info(
                    "node %s went silent; its members leave",
                    other,
                    extra={"event": "node_silent", "node": other},
                )
                self._forget(other)

    def _forget(self, other: str) -> None:
        self._heard.pop(other, None)
        self._versions.pop(other, None)
        if self._node is not None:
            self._node.remote_changed(self._node.roster.drop(other))


def _decode(msg: Msg) -> dict[str, Any] | None:
    try:
        payload = json.loads(msg.data)
    except ValueError:
        return None
    return payload if isinstance(payload, dict) else None


def _changes(raw: Any) -> list[MemberChange]:
    if not isinstance(raw, list):
        return []
    return [
        MemberChange(str(item[0]), str(item[1]), bool(item[2]))
        for item in raw
        if isinstance(item, list) and len(item) == 3
    ]
