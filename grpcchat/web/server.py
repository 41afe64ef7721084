"""The web port: uvicorn serving `WebApp` on a socket we bind ourselves (a clear error when the
address is in use, the real port when any is asked for), as a task on the running event loop,
beside the grpc.aio server and on the same hub."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import socket
import ssl
from collections.abc import Iterator

import uvicorn

from grpcchat.gen.chat.v1.chat_service_connect import ChatServiceASGIApplication
from grpcchat.server.config import ServerConfig, host_port, is_loopback_host
from grpcchat.server.servicer import ChatServicer
from grpcchat.web.app import MAX_HEADER_BYTES, MAX_REQUEST_BYTES, WebApp
from grpcchat.web.connections import connections_per_address, guarded_protocol
from grpcchat.web.service import WebChatService
from grpcchat.web.stream import CutOff

UNARY_HEADROOM = 1_000
# How long `start` waits for uvicorn to be listening.
START_TIMEOUT = 10.0

log = logging.getLogger("grpcchat.web")


class _CutOffFilter(logging.Filter):
    """uvicorn logs an error for a response that ends by raising: a cut-off (`CutOff`) is
    intended and already logged by us, and a request cancelled is one a stop did not wait for
    past its grace (a body still arriving, say), which is no error either."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (
            record.exc_info and isinstance(record.exc_info[1], CutOff | asyncio.CancelledError)
        )


_uvicorn_log = logging.getLogger("uvicorn.error")
_uvicorn_log.addFilter(_CutOffFilter())
# Its "Started server process" / "Shutting down" lines repeat ours: warnings and errors only.
_uvicorn_log.setLevel(logging.WARNING)


class _Server(uvicorn.Server):
    """uvicorn without its signal handlers: the chat server owns SIGINT/SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class WebServer:
    """`await start()`, `port`, `await stop(grace)`."""

    def __init__(self, config: ServerConfig, servicer: ChatServicer) -> None:
        self._config = config
        rpc = ChatServiceASGIApplication(WebChatService(servicer), read_max_bytes=MAX_REQUEST_BYTES)
        app = WebApp(rpc, origins=config.web_origins, loopback=is_loopback_host(config.host))
        max_sessions = config.limits.max_sessions
        tls = bool(config.tls_cert)
        self._uvicorn = _Server(
            uvicorn.Config(
                app,
                http=guarded_protocol(connections_per_address(config.limits)),
                # A client's address is the socket's: X-Forwarded-For is anyone's to write
                # (uvicorn trusts it from 127.0.0.1 by default), and per-client limits key on it.
                proxy_headers=False,
                lifespan="off",
                log_config=None,  # our logging stays as configured
                access_log=False,  # WebApp logs requests (paths only) at debug
                server_header=False,
                h11_max_incomplete_event_size=MAX_HEADER_BYTES,
                limit_concurrency=max_sessions + UNARY_HEADROOM if max_sessions else None,
                timeout_graceful_shutdown=_whole_seconds(config.grace_period) + 1,
                ssl_certfile=config.tls_cert if tls else None,
                ssl_keyfile=config.tls_key if tls else None,
                ssl_ca_certs=config.tls_client_ca or None,
                ssl_cert_reqs=ssl.CERT_REQUIRED if config.tls_client_ca else ssl.CERT_NONE,
            )
        )
        self._task: asyncio.Task[None] | None = None
        self.port = 0

    @property
    def url(self) -> str:
        scheme = "https" if self._config.tls_cert else "http"
        return f"{scheme}://{host_port(self._config.host, self.port)}/"

    async def start(self) -> None:
        """Bind and serve; OSError with a clear message when the address cannot be used."""
        sock = _bind(self._config.host, max(self._config.web_port, 0))
        self.port = sock.getsockname()[1]
        self._task = asyncio.get_running_loop().create_task(
            self._uvicorn.serve(sockets=[sock]), name="grpcchat-web"
        )
        deadline = asyncio.get_running_loop().time() + START_TIMEOUT
        while not self._uvicorn.started:
            if self._task.done() or asyncio.get_running_loop().time() > deadline:
                await self.stop(0)
                raise OSError(
                    f"the web server did not start on {host_port(self._config.host, self.port)}"
                )
            await asyncio.sleep(0.01)

    async def stop(self, grace: float) -> None:
        """Stop accepting, let open exchanges finish (the hub's drain ends the streams,
        UNAVAILABLE) for up to `grace` seconds, then cancel what is left."""
        if self._task is None:
            return
        task, self._task = self._task, None
        self._uvicorn.config.timeout_graceful_shutdown = _whole_seconds(grace) or None
        self._uvicorn.should_exit = True
        if grace <= 0:
            self._uvicorn.force_exit = True
        done, _ = await asyncio.wait([task], timeout=grace + 1.0)
        if not done:
            self._uvicorn.force_exit = True
            task.cancel()
            await asyncio.wait([task], timeout=1.0)


def _whole_seconds(grace: float) -> int:
    """uvicorn's graceful timeout takes whole seconds, and 0 means "no limit": a grace below a
    second rounds up, not down to none."""
    return max(math.ceil(grace), 0)


def _bind(host: str, port: int) -> socket.socket:
    bare = host.strip("[]")
    family = socket.AF_INET6 if ":" in bare else socket.AF_INET
    # `::` takes IPv4 too, as gRPC's port on it does (Python's default there is IPv6 only).
    dual = bare == "::" and socket.has_dualstack_ipv6()
    try:
        return socket.create_server(
            (bare, port), family=family, reuse_port=False, dualstack_ipv6=dual
        )
    except OSError as error:
        raise OSError(
            f"cannot listen on {host_port(host, port)} (web): {error.strerror or error}"
        ) from error
