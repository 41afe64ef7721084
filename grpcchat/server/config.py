"""The server's frozen, validated configuration, built once from flags and GRPCCHAT_* variables."""

from __future__ import annotations

import ipaddress
import logging
import math
import re
from dataclasses import field
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import platformdirs

from grpcchat.core.errors import StoreError
from grpcchat.core.history import Retention
from grpcchat.core.limits import Limits
from grpcchat.core.records import record
from grpcchat.core.urls import redacted_url
from grpcchat.server.connections import (
    DEFAULT_HEARTBEAT,
    DEFAULT_MAX_CONNECTION_AGE,
    DEFAULT_MAX_CONNECTION_AGE_GRACE,
    Keepalive,
)
from grpcchat.server.engines import check_given_store_url, check_store_url

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 4000
DEFAULT_GRACE_PERIOD = 5.0
# Field metadata of a setting never to be shown (`grpcchat serve --check-config` masks it).
SECRET = {"secret": True}
# `--workers`: processes on one port; `--nats-replicas`: JetStream's own limit.
MAX_WORKERS = 64
MAX_NATS_REPLICAS = 5
# What gRPC takes for a time in milliseconds: a signed 32-bit int (about 24.8 days).
MAX_GRPC_SECONDS = (2**31 - 1) // 1000
# `web_port`: 0 is off (the default); this asks for any free port (tests read the real one).
WEB_PORT_ANY = -1


def host_port(host: str, port: int) -> str:
    """`host:port`, with an IPv6 host in brackets."""
    bare = host.strip("[]")
    return f"[{bare}]:{port}" if ":" in bare else f"{bare}:{port}"


def is_loopback_host(host: str) -> bool:
    bare = host.strip("[]")
    if bare == "localhost":
        return True
    try:
        return ipaddress.ip_address(bare).is_loopback
    except ValueError:
        return False


def with_replicas(url: str, replicas: int) -> str:
    """A `nats://` URL whose `replicas=` option is `replicas` (replacing one it had)."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "replicas"]
    return urlunsplit(parts._replace(query=urlencode([*query, ("replicas", str(replicas))])))


def default_data_dir() -> Path:
    """Where history lives unless told otherwise: the platform's per-user data directory."""
    return Path(platformdirs.user_data_dir("grpcchat", appauthor=False))


@record
class ServerConfig:
    """Everything `grpcchat serve` needs; the server reads nothing else."""

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    # History engine URL: sqlite:///path (default: history.db in the data dir) or memory://.
    store: str = ""
    data_dir: str = ""
    retention: Retention = field(default_factory=Retention)
    limits: Limits = field(default_factory=Limits)
    # Authentication is on when a secret is set (HS256 tokens from `grpcchat token`).
    auth_secret: str = field(default="", metadata=SECRET)
    # TLS: certificate chain and key (PEM files); with a client CA, clients must present a
    # certificate it signed (mutual TLS).
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    # How long a draining server waits for in-flight calls before cancelling them.
    grace_period: float = DEFAULT_GRACE_PERIOD
    log_level: int = logging.INFO
    # Long-lived streams (see `connections`): seconds a session stream may stay quiet before
    # an empty response is written (0: never); seconds after which a connection is asked to
    # reconnect (GOAWAY; 0: never) and the seconds its streams then have; HTTP/2 keepalive.
    heartbeat: float = DEFAULT_HEARTBEAT
    max_connection_age: float = DEFAULT_MAX_CONNECTION_AGE
    max_connection_age_grace: float = DEFAULT_MAX_CONNECTION_AGE_GRACE
    keepalive: Keepalive = field(default_factory=Keepalive)
    # Prometheus metrics at http://host:metrics_port/metrics (same interface as gRPC); 0: off.
    # With workers, worker i serves them on metrics_port + i.
    metrics_port: int = 0
    # nats://host:4222[,host:4222][?stream=NAME]: history, fan-out and presence shared with
    # every server on that broker (the same as a nats:// store, which it replaces).
    broker: str = ""
    # The JetStream stream's replicas (overrides the URL's replicas=); 0: as the URL says
    # (without replicas=, an existing stream keeps its own, a new one gets 1).
    nats_replicas: int = 0
    # `grpcchat serve --workers N` (`grpcchat.server.workers`): N processes on one port.
    workers: int = 1
    # Share the port with other processes that ask for it too (SO_REUSEPORT): only the
    # workers do, so that a second server on a busy port fails instead of splitting clients.
    reuse_port: bool = False
    # `grpcchat serve --web-port`: the chat page and ChatService over Connect and gRPC-Web on
    # this port (same host; 0: off). Other origins allowed to call it (CORS), as
    # `scheme://host[:port]`; the page's own origin always is.
    web_port: int = 0
    web_origins: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be between 0 and 65535, not {self.port}")
        if not 0 <= self.metrics_port <= 65535:
            raise ValueError(
                f"metrics port must be between 0 (off) and 65535, not {self.metrics_port}"
            )
        if not 0 <= self.grace_period < math.inf:
            raise ValueError(
                f"grace period must be 0 or more seconds (and finite), not {self.grace_period}"
            )
        for what, seconds in (
            ("heartbeat", self.heartbeat),
            ("max connection age", self.max_connection_age),
            ("max connection age grace", self.max_connection_age_grace),
        ):
            if not 0 <= seconds < math.inf:
                raise ValueError(f"{what} must be 0 or more seconds (and finite), not {seconds}")
        for what, seconds in (
            ("max connection age", self.max_connection_age),
            ("max connection age grace", self.max_connection_age_grace),
        ):
            if seconds > MAX_GRPC_SECONDS:
                raise ValueError(
                    f"{what} must be at most {MAX_GRPC_SECONDS:.0f} seconds (gRPC counts it in "
                    f"32-bit milliseconds, about 24.8 days), not {seconds:g}"
                )
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("TLS needs both --tls-cert and --tls-key")
        if self.tls_client_ca and not self.tls_cert:
            raise ValueError("--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key")
        if self.store:
            try:
                check_given_store_url(self.store)
            except StoreError as error:
                raise ValueError(str(error)) from None
        self._check_scale_out()
        self._check_web()
        self._check_ports_apart()

    def _check_ports_apart(self) -> None:
        """The gRPC, web and metrics ports (one a worker) given are all different: otherwise
        the second to start fails as if another program held the port."""
        ports = [("--port", self.port)] if self.port else []
        if self.web_port > 0:
            ports.append(("--web-port", self.web_port))
        if self.metrics_port:
            metrics = range(self.metrics_port, self.metrics_port + self.workers)
            ports += [("--metrics-port", port) for port in metrics]
        seen: dict[int, str] = {}
        for option, port in ports:
            if port in seen and seen[port] != option:
                raise ValueError(
                    f"{option} and {seen[port]} both take port {port}"
                    + (" (one metrics port a worker)" if self.workers > 1 else "")
                    + ": give each its own"
                )
            seen.setdefault(port, option)

    def _check_web(self) -> None:
        if not WEB_PORT_ANY <= self.web_port <= 65535:
            raise ValueError(f"web port must be between 0 (off) and 65535, not {self.web_port}")
        for origin in self.web_origins:
            if not _is_origin(origin):
                raise ValueError(
                    f"--web-origin takes an origin such as https://chat.example.com or "
                    f"http://localhost:5173 (scheme, host, optional port), not {origin!r}"
                )
        if self.web_port and self.workers > 1:
            raise ValueError("--web-port serves from one process: it cannot be used with --workers")
        if self.web_origins and not self.web_port:
            raise ValueError("--web-origin needs --web-port")
        if (
            self.web_port
            and self.auth_secret
            and not self.tls_cert
            and not is_loopback_host(self.host)
        ):
            # The same rule as the clients': a token never travels in plaintext off the machine.
            raise ValueError(
                f"--web-port with --auth-secret on --host {self.host} would let browsers send "
                "tokens in plaintext: add --tls-cert/--tls-key, or serve on a loopback host"
            )

    def _check_scale_out(self) -> None:
        """--broker, --nats-replicas and --workers: each needs a history processes can share."""
        if self.broker:
            if self.broker.partition("://")[0].lower() != "nats":
                raise ValueError(
                    f"--broker takes a NATS URL such as nats://127.0.0.1:4222, "
                    f"not {redacted_url(self.broker)!r}"
                )
            try:
                check_store_url(self.broker)  # its servers, stream and options
            except StoreError as error:
                raise ValueError(str(error)) from None
            if self.store and self.store != self.broker:
                raise ValueError(
                    f"--broker {redacted_url(self.broker)} keeps history on the broker: "
                    f"drop --store {redacted_url(self.store)} (or give the same URL)"
                )
        shared = self.broker or self.store
        on_nats = shared.startswith("nats://")
        if not 0 <= self.nats_replicas <= MAX_NATS_REPLICAS:
            raise ValueError(f"--nats-replicas must be 1 to {MAX_NATS_REPLICAS}")
        if self.nats_replicas and not on_nats:
            raise ValueError(
                "--nats-replicas sets how many copies of the stream NATS keeps: it needs --broker"
            )
        if not 1 <= self.workers <= MAX_WORKERS:
            raise ValueError(f"--workers must be 1 to {MAX_WORKERS}, not {self.workers}")
        if self.workers > 1 and shared and not on_nats:
            raise ValueError(
                f"--workers {self.workers} runs {self.workers} processes on one history, and "
                f"{redacted_url(shared)} cannot be shared between processes: use --broker "
                "nats://host:4222, or leave --store out to start a local nats-server"
            )
        if self.metrics_port and self.metrics_port + self.workers - 1 > 65535:
            raise ValueError(
                f"--metrics-port {self.metrics_port} + {self.workers} workers passes 65535"
            )

    @property
    def store_url(self) -> str:
        shared = self.broker or self.store
        if shared:
            return with_replicas(shared, self.nats_replicas) if self.nats_replicas else shared
        data_dir = Path(self.data_dir) if self.data_dir else default_data_dir()
        return f"sqlite://{data_dir / 'history.db'}"

    @property
    def bind_address(self) -> str:
        return host_port(self.host, self.port)


# A host as a browser's Origin spells it: a name, an IPv4 address, or an IPv6 one in brackets;
# and its port, as a browser writes it (no leading zeros; none at all for the default one).
_ORIGIN_HOST = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\]")
_ORIGIN_PORT = re.compile(r"[1-9][0-9]{0,4}")


def _is_origin(origin: str) -> bool:
    """Whether `origin` can be what a browser sends as its Origin: scheme, host, an optional
    port (1-65535), nothing else; a trailing slash, as copied from the address bar, is
    allowed (origins are matched without it). A port out of range or a host with a space
    would never match, and the page be refused without a word."""
    try:
        parts = urlsplit(origin)
        port = parts.port
    except ValueError:  # a port that is no number or past 65535; an unclosed bracket
        return False
    host, _, port_text = (
        parts.netloc.rpartition(":") if port is not None else (parts.netloc, "", "")
    )
    return (
        parts.scheme in ("http", "https")
        and bool(_ORIGIN_HOST.fullmatch(host))
        and (port is None or bool(_ORIGIN_PORT.fullmatch(port_text)))
        and not parts.netloc.endswith(":")
        and parts.path in ("", "/")
        and not (parts.query or parts.fragment or "?" in origin or "#" in origin)
    )
