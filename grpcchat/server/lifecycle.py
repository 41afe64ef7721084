"""Composition root and lifecycle: build the hub and the gRPC server, run, drain, stop."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING

import grpc
from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from grpcchat.core.cluster import Cluster
from grpcchat.core.errors import HistoryReplaced, StoreError
from grpcchat.core.feed import Connected, RoomFeed
from grpcchat.core.files import read_tls_files
from grpcchat.core.history import HistoryStore
from grpcchat.core.hub import Hub
from grpcchat.core.urls import redacted_url
from grpcchat.server.auth import TokenAuthority
from grpcchat.server.config import ServerConfig, host_port
from grpcchat.server.connections import connection_options
from grpcchat.server.engines import open_store
from grpcchat.server.health import HealthService
from grpcchat.server.registration import SERVICE_NAME, add_to_server
from grpcchat.server.servicer import ChatServicer

if TYPE_CHECKING:
    from grpcchat.server.metrics import MetricsEndpoint
    from grpcchat.web.server import WebServer

log = logging.getLogger("grpcchat.server")


class _AbortedWriteFilter(logging.Filter):
    """grpc.aio logs an ExecuteBatchError traceback for a write still pending when we end a
    call on purpose (a slow consumer cut off mid-write): expected, so not worth an error."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "ExecuteBatchError" not in record.getMessage()


logging.getLogger("grpc._cython.cygrpc").addFilter(_AbortedWriteFilter())

MAX_REQUEST_BYTES = 64 * 1024
MAX_METADATA_BYTES = 16 * 1024
# Unary calls that may run beside the streams a full server holds.
UNARY_HEADROOM = 1_000
# The room feed (several processes on one history) is retried after failing, waiting this long
# at first, doubling up to the second.
FEED_RETRY = 0.5
FEED_RETRY_MAX = 10.0
# A lost engine connection back within this long (nats-py reconnecting, perhaps to another
# node of a NATS cluster) restarts the feed only; past it, the node is suspended.
RECONNECT_GRACE = 2.0
# How long `start` waits for the room feed to be subscribed (health says SERVING only then).
FEED_START_TIMEOUT = 10.0

_GRPC_OPTIONS = [
    # gRPC shares ports by default (SO_REUSEPORT): a second server on a busy port would start
    # "successfully" and split the clients with the first. So the port is shared only when the
    # config says so (`reuse_port`: the workers of `grpcchat serve --workers N`); see __init__.
    # Opening thousands of streams in one burst otherwise leaves some unregistered (CANCELLED).
    ("grpc.server.max_pending_requests", 10000),
    # Keepalive and connection age come from the config: see `connections`.
    # Every input is bounded: the largest legal request (a 4,096-character message, 4 bytes a
    # character at worst, plus its other bounded fields) is far below this; anything bigger is
    # refused by gRPC with RESOURCE_EXHAUSTED before it is parsed.
    ("grpc.max_receive_message_length", MAX_REQUEST_BYTES),
    # Headers and metadata (the bearer token among them). Both limits: gRPC refuses past its
    # soft one only at random (some of the calls with 17 KiB of headers went through), and its
    # hard one defaults to 1.25 times the soft.
    ("grpc.max_metadata_size", MAX_METADATA_BYTES),
    ("grpc.absolute_max_metadata_size", MAX_METADATA_BYTES),
]


def _server_credentials(config: ServerConfig) -> grpc.ServerCredentials | None:
    if not config.tls_cert:
        return None
    chain, key, client_ca = read_tls_files(config.tls_cert, config.tls_key, config.tls_client_ca)
    return grpc.ssl_server_credentials(
        [(key, chain)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


class ChatServer:
    """One chat server process: `async with ChatServer(config) as server: await server.wait()`."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        # Admission control below the hub: past this many calls at once gRPC itself answers
        # RESOURCE_EXHAUSTED, so a flood of calls cannot pile up without bound.
        max_sessions = config.limits.max_sessions
        self._server = aio.server(
            options=[
                *_GRPC_OPTIONS,
                ("grpc.so_reuseport", int(config.reuse_port)),
                *connection_options(
                    config.keepalive, config.max_connection_age, config.max_connection_age_grace
                ),
            ],
            maximum_concurrent_rpcs=max_sessions + UNARY_HEADROOM if max_sessions else None,
        )
        self._health = HealthService()
        self.port = 0
        self._store: HistoryStore | None = None
        self._hub: Hub | None = None
        self._metrics: MetricsEndpoint | None = None
        self._web: WebServer | None = None
        self._feed: asyncio.Task[None] | None = None
        self._sharing: asyncio.Task[None] | None = None
        # Whether the room feed is being followed (a metric; False while it is retried).
        self.feed_up = False
        # Why the server stopped serving for good, if it did (see `wait`).
        self.failure: HistoryReplaced | None = None
        self.failed = asyncio.Event()

    @property
    def hub(self) -> Hub:
        if self._hub is None:
            raise RuntimeError("the server is not started")
        return self._hub

    async def start(self) -> None:
        """Open the store, bind, start serving. Raises StoreError or OSError with a clear
        message when the history or the address cannot be used."""
        auth = TokenAuthority(self.config.auth_secret) if self.config.auth_secret else None
        credentials = _server_credentials(self.config)
        self._store = store = await open_store(self.config.store_url, self.config.retention)
        self._hub = Hub(store, self.config.limits, dedup_window=self.config.retention.dedup_window)
        servicer = ChatServicer(self._hub, auth, heartbeat=self.config.heartbeat)
        add_to_server(servicer, self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self._server
        )
        try:
            self._start_metrics(servicer)
        except OSError:
            await store.aclose()
            raise
        try:
            if credentials is None:
                self.port = self._server.add_insecure_port(self.config.bind_address)
            else:
                self.port = self._server.add_secure_port(self.config.bind_address, credentials)
        except RuntimeError as error:
            await self._stop_metrics()
            await store.aclose()
            raise OSError(
                f"cannot listen on {self.config.bind_address}: the address is in use or invalid"
            ) from error
        self._set_serving(False)  # the health service's default is SERVING
        await self._server.start()
        try:
            await self._start_web(servicer)
        except OSError:
            await self._server.stop(0)
            await self._stop_metrics()
            await store.aclose()
            raise
        if isinstance(store, Cluster):
            self._sharing = asyncio.get_running_loop().create_task(
                self._share(store, self._hub), name="grpcchat-presence"
            )
        if not isinstance(store, RoomFeed):
            self._set_serving(True)
            return
        following = asyncio.Event()
        self._feed = feed = asyncio.get_running_loop().create_task(
            self._follow(store, self._hub, following), name="grpcchat-room-feed"
        )
        waiting = asyncio.ensure_future(following.wait())
        await asyncio.wait(
            [waiting, feed], timeout=FEED_START_TIMEOUT, return_when=asyncio.FIRST_COMPLETED
        )
        waiting.cancel()

    async def _follow(self, feed: RoomFeed, hub: Hub, following: asyncio.Event) -> None:
        """Deliver the rooms' messages appended by other processes, for as long as the server
        runs. Health says SERVING once the feed is subscribed. While it is down (logged; losing
        the engine's connection ends it too), health says NOT_SERVING and the hub is
        suspended: new work is refused with UNAVAILABLE and the sessions end, so their
        clients fail over to a node that can serve them; it is retried, and resumes where it
        stopped."""
        delay = FEED_RETRY

        async def on_following() -> None:
            nonlocal delay
            delay = FEED_RETRY
            self.feed_up = True
            hub.resume()
            if not hub.draining:
                self._set_serving(True)
            following.set()

        while True:
            was_down = _disconnected(feed)
            try:
                await feed.follow(hub.receive, on_following)
                return  # the store closed
            except HistoryReplaced as exc:  # no retry helps: the server stops, `wait` says why
                self.feed_up = False
                hub.suspend("this server's shared history (NATS) was replaced; try another server")
                self._set_serving(False)
                self.failure = exc
                self.failed.set()
                return
            except StoreError as exc:
                log.warning(
                    "the room feed failed (retrying in %.1fs): %s",
                    delay,
                    exc,
                    extra={"event": "feed_failed", "retry_seconds": delay},
                )
            except Exception:
                log.exception(
                    "the room feed failed (retrying in %.1fs)",
                    delay,
                    extra={"event": "feed_failed", "retry_seconds": delay},
                )
            self.feed_up = False
            if hub.draining:
                return
            if _disconnected(feed) and not was_down and await _reconnects(feed, RECONNECT_GRACE):
                continue  # a blip, or a hop to another NATS node: only the feed restarts
            hub.suspend(
                "this server cannot reach its shared history (NATS) for now; try another server"
            )
            self._set_serving(False)
            await asyncio.sleep(delay)
            delay = min(delay * 2, FEED_RETRY_MAX)
            if hub.draining:
                return

    async def _share(self, cluster: Cluster, hub: Hub) -> None:
        """Share who is here, and direct messages, with the other nodes while the server runs;
        after a failure (logged) it starts over."""
        delay = FEED_RETRY
        while not hub.draining:
            try:
                await cluster.share(hub)
                return  # the store closed
            except StoreError as exc:
                log.warning(
                    "presence across nodes failed (retrying in %.1fs): %s",
                    delay,
                    exc,
                    extra={"event": "presence_failed", "retry_seconds": delay},
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, FEED_RETRY_MAX)

    @property
    def address(self) -> str:
        return host_port(self.config.host, self.port)

    @property
    def metrics_port(self) -> int:
        """The port /metrics is served on; 0 when metrics are off."""
        return self._metrics.port if self._metrics is not None else 0

    def _start_metrics(self, servicer: ChatServicer) -> None:
        """Serve /metrics on the side port, if one is set (prometheus_client is loaded only
        then). An engine's own collector would be added here (see `metrics`)."""
        if not self.config.metrics_port:
            return
        from grpcchat.server.metrics import ChatCollector, EngineCollector, MetricsEndpoint

        metrics = MetricsEndpoint(ChatCollector(self.hub, servicer.stats))
        store = self.hub.store
        if isinstance(store, RoomFeed):
            engine: Connected | None = store if isinstance(store, Connected) else None
            connected = (lambda: engine.connected) if engine is not None else None
            metrics.add(EngineCollector(lambda: self.feed_up, connected))
        metrics.start(self.config.host, self.config.metrics_port)
        self._metrics = metrics

    @property
    def web_port(self) -> int:
        """The port the web page and Connect/gRPC-Web are served on; 0 when the web is off."""
        return self._web.port if self._web is not None else 0

    @property
    def web_url(self) -> str:
        return self._web.url if self._web is not None else ""

    async def _start_web(self, servicer: ChatServicer) -> None:
        """Serve the page and ChatService over Connect and gRPC-Web on the web port, if one is
        set (grpcchat.web, connectrpc and uvicorn are loaded only then), on this event loop
        and hub."""
        if not self.config.web_port:
            return
        from grpcchat.web.server import WebServer

        web = WebServer(self.config, servicer)
        await web.start()
        self._web = web

    async def _stop_web(self, grace: float) -> None:
        if self._web is not None:
            web, self._web = self._web, None
            await web.stop(grace)

    async def _stop_metrics(self) -> None:
        if self._metrics is not None:
            metrics, self._metrics = self._metrics, None
            await asyncio.to_thread(metrics.stop)

    def _set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for service in ("", SERVICE_NAME):
            self._health.set(service, status)

    async def stop(self, grace: float | None = None) -> None:
        """Drain: report NOT_SERVING, tell every stream to reconnect (UNAVAILABLE) after flushing
        what it has queued, refuse new calls, and cancel what is left after `grace` seconds."""
        grace = self.config.grace_period if grace is None else grace
        self._health.drain()
        if self._hub is not None:
            self._hub.drain()
        await asyncio.gather(self._server.stop(grace), self._stop_web(grace))
        if self._feed is not None:
            feed, self._feed = self._feed, None
            feed.cancel()
            await asyncio.wait([feed], timeout=grace + 1.0)  # closing the store ends it too
        if self._store is not None:
            store, self._store = self._store, None
            await store.aclose()  # says goodbye to the other nodes, which ends the sharing
        if self._sharing is not None:
            sharing, self._sharing = self._sharing, None
            sharing.cancel()
            await asyncio.wait([sharing], timeout=1.0)
        await self._stop_metrics()  # last: the drain stays visible to a scrape until the end

    async def wait(self) -> None:
        """Until the server terminates, or fails for good: then raise why (HistoryReplaced)."""
        # Shielded: cancelling gRPC's own wait would cancel the future `stop` awaits too.
        terminated: asyncio.Future[object] = asyncio.shield(self._server.wait_for_termination())
        failed: asyncio.Future[object] = asyncio.ensure_future(self.failed.wait())
        try:
            await asyncio.wait([terminated, failed], return_when=asyncio.FIRST_COMPLETED)
        finally:
            terminated.cancel()
            failed.cancel()
        if self.failure is not None:
            raise self.failure

    async def __aenter__(self) -> ChatServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop(0 if exc is not None else None)


async def serve(config: ServerConfig, on_started: Callable[[ChatServer], None]) -> None:
    """Run until SIGINT/SIGTERM. The first signal drains gracefully; a second one stops at once."""
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)
    stop_requested = asyncio.Event()
    drain: asyncio.Future[None] | None = None

    def on_signal() -> None:
        if drain is not None:
            log.warning("second signal: stopping now", extra={"event": "forced_stop"})
            drain.cancel()
        stop_requested.set()

    server = ChatServer(config)
    await server.start()
    try:
        for sig in signals:
            loop.add_signal_handler(sig, on_signal)
        on_started(server)
        log.info("listening on %s", server.address, extra=_started_fields(server))
        stopping = asyncio.ensure_future(stop_requested.wait())
        failing = asyncio.ensure_future(server.failed.wait())
        await asyncio.wait([stopping, failing], return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        failing.cancel()
        if server.failure is not None:
            raise server.failure  # stopped below; `serve` says why and exits 1
        # A worker of `--workers` gets no Ctrl-C (its own process group): its supervisor says
        # how to force the stop, once.
        force = "" if config.reuse_port else " (Ctrl-C again to force)"
        log.info(
            "shutting down: draining for up to %.1fs%s",
            config.grace_period,
            force,
            extra={"event": "draining", "grace_seconds": config.grace_period},
        )
        drain = asyncio.ensure_future(server.stop())
        await drain
    except asyncio.CancelledError:
        await server.stop(0)
        if drain is None or not drain.cancelled():
            raise  # cancelled from outside, not by a second signal
    except BaseException:
        await server.stop(0)  # anything that goes wrong still closes the port and the store
        raise
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
    log.info("server stopped", extra={"event": "server_stopped"})


async def _reconnects(engine: object, within: float) -> bool:
    """Whether an engine with a connection of its own has it (back) within `within` seconds."""
    if not isinstance(engine, Connected):
        return False
    deadline = asyncio.get_running_loop().time() + within
    while not engine.connected:
        if asyncio.get_running_loop().time() >= deadline:
            return False
        await asyncio.sleep(0.05)
    return True


def _disconnected(engine: object) -> bool:
    return isinstance(engine, Connected) and not engine.connected


def _started_fields(server: ChatServer) -> dict[str, object]:
    config = server.config
    return {
        "event": "server_started",
        "address": server.address,
        "port": server.port,
        "store": redacted_url(config.store_url),
        "tls": bool(config.tls_cert),
        "mutual_tls": bool(config.tls_client_ca),
        "auth": bool(config.auth_secret),
        **({"web": server.web_url} if server.web_port else {}),
    }


def run(config: ServerConfig, on_started: Callable[[ChatServer], None]) -> None:
    """`serve` on the fastest event loop available: uvloop when it is installed (measured
    here: more deliveries per second for less CPU), asyncio's own otherwise."""
    with asyncio.Runner(loop_factory=_fast_loop_factory()) as runner:
        runner.run(serve(config, on_started))


def _fast_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory
