"""Connecting to NATS and opening the history's stream; NATS failures as StoreError.

`Link` is the connection as nats-py reports it, and whether the store is closed: appends and
the feed check it, so one made while nats-py reconnects fails at once rather than at the end
of its timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Iterator

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import StorageType, StreamConfig

from grpcchat.core.errors import StoreError
from grpcchat.core.history import Retention
from grpcchat.core.urls import redacted_url
from grpcchat.store.nats import streams
from grpcchat.store.nats.codec import Options
from grpcchat.store.nats.markers import Markers

log = logging.getLogger("grpcchat.store")

CONNECT_TIMEOUT = 5.0
REQUEST_TIMEOUT = 5.0
# A connection whose server stops answering (no TCP reset: a partition) is given up after
# this many seconds without a PONG, times two, and reconnected.
PING_INTERVAL = 5
EPOCH_KEY = "grpcchat-epoch"
NATS_ERRORS = (nats.errors.Error, TimeoutError, OSError)


def reason(exc: BaseException) -> str:
    """What went wrong, for a person: nats-py raises some errors with no message at all."""
    return str(exc) or type(exc).__name__


@contextlib.contextmanager
def errors(doing: str) -> Iterator[None]:
    """NATS failures as StoreError, naming what failed."""
    try:
        yield
    except nats.js.errors.ServiceUnavailableError:
        raise StoreError(
            f"NATS refused to {doing}: JetStream is not enabled there (start nats-server with -js)"
        ) from None
    except nats.js.errors.APIError as exc:
        raise StoreError(f"NATS refused to {doing}: {exc.description or reason(exc)}") from None
    except NATS_ERRORS as exc:
        raise StoreError(f"could not {doing} on NATS: {reason(exc)}") from None


class Link:
    """The connection as nats-py reports it (its callbacks): `up` while connected, `down`
    while not (reconnecting, or closed); `closing` once the store is closed."""

    def __init__(self, options: Options) -> None:
        self.where = ", ".join(redacted_url(server) for server in options.servers)
        self.stream = options.stream
        self.up = asyncio.Event()
        self.down = asyncio.Event()
        # Set by `aclose`: the connection ending then is no news worth a warning.
        self.closing = False

    def check_open(self) -> None:
        if self.closing:
            raise StoreError(f"the history store (NATS stream {self.stream}) is closed")

    def check_connected(self, doing: str) -> None:
        """Fail fast while reconnecting: nats-py would hold the request until its timeout."""
        if not self.up.is_set():
            raise StoreError(f"could not {doing}: no connection to NATS ({self.where})")

    @contextlib.contextmanager
    def request(self, doing: str) -> Iterator[None]:
        """`errors(doing)` around requests to NATS, refused at once while it is not connected."""
        self.check_connected(doing)
        with errors(doing):
            yield

    async def connected(self) -> None:
        self.down.clear()
        self.up.set()

    async def reconnected(self) -> None:
        log.warning("reconnected to NATS (%s)", self.where, extra={"event": "nats_reconnected"})
        await self.connected()

    async def disconnected(self) -> None:
        if self.up.is_set() and not self.closing:
            log.warning(
                "lost the connection to NATS (%s): reconnecting",
                self.where,
                extra={"event": "nats_disconnected"},
            )
        self.up.clear()
        self.down.set()


async def connect(options: Options, retention: Retention) -> tuple[Client, Link, str]:
    """Connect to the servers of `options` and open (creating them if missing) the history's
    stream and its markers' stream: the connection, its link and the history's epoch. Raises
    StoreError, naming the servers, if NATS cannot be reached or refuses."""
    link = Link(options)
    problems: list[str] = []

    async def report(exc: Exception) -> None:
        problems.append(reason(exc))
        log.warning(
            "NATS connection problem (%s): %s",
            link.where,
            problems[-1],
            extra={"event": "nats_problem"},
        )

    try:
        # Bounded here: nats-py retries the first connection for as long as it reconnects.
        async with asyncio.timeout(CONNECT_TIMEOUT):
            nc = await nats.connect(
                options.servers,
                error_cb=report,
                disconnected_cb=link.disconnected,
                reconnected_cb=link.reconnected,
                closed_cb=link.disconnected,
                connect_timeout=int(CONNECT_TIMEOUT),
                max_reconnect_attempts=-1,
                ping_interval=PING_INTERVAL,
            )
    except TimeoutError:
        # Not reached, or refused: a wrong password was told as "cannot reach" (nats-py keeps
        # retrying it, telling `report` why each time).
        refusal = next((p for p in problems if _refused(p)), "")
        if refusal:
            raise _refused_by(link.where, refusal) from None
        last = f" ({problems[-1]})" if problems else ""
        raise StoreError(
            f"cannot reach NATS at {link.where} within {CONNECT_TIMEOUT:g}s{last}"
        ) from None
    except NATS_ERRORS as exc:
        if _refused(why := reason(exc)):
            raise _refused_by(link.where, why) from None
        raise StoreError(f"cannot reach NATS at {link.where}: {why}") from None
    try:
        with errors(f"open the stream {options.stream}"):
            js = nc.jetstream(timeout=REQUEST_TIMEOUT)
            epoch, replicas = await _open_stream(js, options, retention)
            await Markers(js, options.stream, epoch, retention).open(replicas)
    except BaseException:
        await nc.close()
        raise
    await link.connected()
    return nc, link, epoch


def _refused(problem: str) -> bool:
    return "authorization" in problem.lower()


def _refused_by(where: str, problem: str) -> StoreError:
    return StoreError(
        f"NATS at {where} refused the connection: {problem} (check the user and password, or "
        "the token, in the URL)"
    )


async def _open_stream(
    js: JetStreamContext, options: Options, retention: Retention
) -> tuple[str, int]:
    """The epoch of the stream and its replicas, creating the stream (with a new epoch) if it
    is missing, and updating its dedup window if it changed, and its replicas if the URL names
    others (a URL without `replicas=` leaves an existing stream's as they are: one server
    started without them must not take a cluster's copies away)."""
    window = retention.dedup_window.total_seconds()
    try:
        info = await js.stream_info(options.stream)
    except nats.js.errors.NotFoundError:
        config = StreamConfig(
            name=options.stream,
            description="grpcchat history",
            subjects=[f"{options.prefix}>"],
            storage=StorageType.FILE,
            num_replicas=options.replicas or 1,
            duplicate_window=window,
            allow_direct=True,
            metadata={EPOCH_KEY: uuid.uuid4().hex},
        )
        info = await streams.add_or_find(js, config)
    epoch = (info.config.metadata or {}).get(EPOCH_KEY)
    if not epoch:
        raise StoreError(f"the NATS stream {options.stream} is not a grpcchat history")
    replicas = options.replicas or info.config.num_replicas or 1
    if info.config.duplicate_window != window or info.config.num_replicas != replicas:
        if info.config.num_replicas != replicas:
            # Every node on the stream keeps what one node's flag sets: said, not done quietly.
            log.warning(
                "the NATS stream %s had %d replicas; it now has %d (as this server's URL or "
                "--nats-replicas says), for every node that uses it",
                options.stream,
                info.config.num_replicas or 1,
                replicas,
                extra={"event": "stream_replicas_changed", "replicas": replicas},
            )
        config = info.config.evolve(duplicate_window=window, num_replicas=replicas)
        await js.update_stream(config)
    return epoch, replicas
