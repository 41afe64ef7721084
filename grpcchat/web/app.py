"""The web port's ASGI application: every request passes the origin, host and URL checks,
every response gets the security headers, then `/chat.v1.ChatService/*` goes to connectrpc
(Connect and gRPC-Web) and everything else to the static page.

URL layout:
    GET  /                           the chat page (static/index.html)
    GET  /static/<file>              a file of static/ (app.js, app.css, ...), nothing else
    POST /chat.v1.ChatService/<RPC>  Connect (JSON or binary) and gRPC-Web
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from grpcchat.web.stream import HEARTBEAT_HEADER, CutOff, Exchange, current_exchange

# The same bounds as the gRPC port's (lifecycle's MAX_REQUEST_BYTES, MAX_METADATA_BYTES).
MAX_REQUEST_BYTES = 64 * 1024
MAX_HEADER_BYTES = 16 * 1024
# An RPC's body is read whole before it is served, within this many seconds and bytes (a
# compressed one may be larger than its message; connectrpc refuses past MAX_REQUEST_BYTES):
# a client that never finishes its body holds nothing for longer.
BODY_DEADLINE = 10.0
MAX_BODY_BYTES = 2 * MAX_REQUEST_BYTES

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
RawHeaders = list[tuple[bytes, bytes]]

STATIC_DIR = Path(__file__).parent / "static"
RPC_PREFIX = "/chat.v1.ChatService/"

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = (
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
)
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".map": "application/json",
    ".json": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".woff2": "font/woff2",
    ".txt": "text/plain; charset=utf-8",
}
# Query parameters that would put a credential in a URL (browser history, proxy and server
# logs, Referer): refused outright, whatever the path.
TOKEN_PARAMETERS = frozenset({"token", "access_token", "authorization", "auth", "bearer", "jwt"})
# What a cross-origin page allowed by --web-origin may send and read (Connect and gRPC-Web).
CORS_ALLOW_HEADERS = (
    "authorization, content-type, connect-protocol-version, connect-timeout-ms, "
    "connect-accept-encoding, connect-content-encoding, grpc-timeout, x-grpc-web, x-user-agent"
)
CORS_EXPOSE_HEADERS = (
    "grpc-status, grpc-message, grpc-status-details-bin, retry-after-ms, trailer-retry-after-ms, "
    f"{HEARTBEAT_HEADER}"
)

# gRPC's numeric codes of the refusals `_refuse` answers gRPC-Web with.
_GRPC_CODES = {
    "invalid_argument": b"3",
    "deadline_exceeded": b"4",
    "permission_denied": b"7",
    "resource_exhausted": b"8",
    "unimplemented": b"12",
}

access_log = logging.getLogger("grpcchat.web.access")


class WebApp:
    """The ASGI application; `rpc` is connectrpc's ChatServiceASGIApplication."""

    def __init__(self, rpc: ASGIApp, *, origins: Iterable[str] = (), loopback: bool) -> None:
        self._rpc = rpc
        self._origins = frozenset(map(_origin_key, origins))
        # Bound to a loopback address: only loopback Host names are ours (DNS rebinding).
        self._loopback = loopback

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return  # no lifespan (off in uvicorn's config), no websockets
        exchange = Exchange()
        current_exchange.set(exchange)
        status = 0

        async def respond(message: Message) -> None:
            nonlocal status
            if exchange.cut_off:
                raise CutOff("the client stopped reading")
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), *SECURITY_HEADERS]
            await send(message)

        try:
            await self._route(scope, receive, respond)
        except asyncio.CancelledError:
            if not exchange.cut_off:
                raise
            exchange.task.uncancel()
            raise CutOff("the client stopped reading") from None
        finally:
            # The path only: a query string is never logged.
            access_log.debug(
                "%s %s %s",
                scope.get("method"),
                scope.get("path"),
                status or "-",
                extra={"event": "web_request", "status": status, "path": scope.get("path")},
            )

    async def _route(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        rpc = path.startswith(RPC_PREFIX)
        headers = _headers(scope)
        host = headers.get("host", "")
        origin = headers.get("origin")
        cors = self._cors(scope, host, origin)
        # Every answer to an allowed origin carries its CORS headers, refusals too: without
        # them its page cannot read why it was refused.
        answer = _with_headers(send, cors or [])
        query = scope.get("query_string", b"").decode("latin-1")
        if any(key.lower() in TOKEN_PARAMETERS for key, _ in parse_qsl(query)):
            message = "tokens are never accepted in URLs: send `Authorization: Bearer <token>`"
            await _refuse(answer, rpc, headers, 400, "invalid_argument", message)
            return
        if (why := _unacceptable_headers(scope)) is not None:
            status, code, message = why
            await _refuse(answer, rpc, headers, status, code, message)
            return
        if self._loopback and not _is_loopback_host(host):
            await _refuse(answer, rpc, headers, 421, "permission_denied", f"unknown host {host!r}")
            return
        if cors is None:
            message = f"origin {origin!r} may not call this server (see --web-origin)"
            await _refuse(send, rpc, headers, 403, "permission_denied", message)
            return
        if cors and scope["method"] == "OPTIONS":
            await _preflight(send, cors)
            return
        content_type = headers.get("content-type", "")
        if rpc and content_type.startswith("application/grpc") and "grpc-web" not in content_type:
            message = "plain gRPC is served on the gRPC port; this port speaks Connect and gRPC-Web"
            await _refuse(answer, rpc, headers, 415, "unimplemented", message)
            return
        if rpc:
            body = await _read_body(receive)
            if body is None:
                return  # the client left before its request was read: nobody to answer
            if isinstance(body, tuple):
                status, code, message = body
                await _refuse(answer, rpc, headers, status, code, message)
                return
            await self._rpc(scope, _replaying(body, receive), _explained(answer, scope, headers))
            return
        await _static(scope, answer)

    def _cors(self, scope: Scope, host: str, origin: str | None) -> RawHeaders | None:
        """The CORS headers for a request from `origin`: none for the page's own origin (or no
        Origin), None for an origin --web-origin does not allow."""
        same_origin = f"{scope.get('scheme', 'http')}://{host}".lower()  # hosts have no case
        if origin is None or origin.lower() == same_origin:
            return []
        if _origin_key(origin) not in self._origins:
            return None
        return [
            (b"access-control-allow-origin", origin.encode()),
            (b"access-control-expose-headers", CORS_EXPOSE_HEADERS.encode()),
            (b"vary", b"Origin"),
        ]


def _origin_key(origin: str) -> str:
    """An origin as compared: lower case, no trailing slash, no default port (a browser never
    sends `:443` for https or `:80` for http, so `--web-origin https://host:443` must match
    `https://host`)."""
    key = origin.rstrip("/").lower()
    for scheme, port in (("https://", ":443"), ("http://", ":80")):
        if key.startswith(scheme) and key.endswith(port):
            return key.removesuffix(port)
    return key


def _headers(scope: Scope) -> dict[str, str]:
    return {
        key.decode("latin-1").lower(): value.decode("latin-1")
        for key, value in scope.get("headers", ())
    }


async def _read_body(receive: Receive) -> bytes | tuple[int, str, str] | None:
    """The request's whole body; why it is refused, too slow (BODY_DEADLINE) or too large
    (MAX_BODY_BYTES); or None, the client gone."""
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(BODY_DEADLINE):
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    return None
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > MAX_BODY_BYTES:
                    return (
                        413,
                        "resource_exhausted",
                        f"requests are limited to {MAX_BODY_BYTES:,} bytes",
                    )
                chunks.append(chunk)
                if not message.get("more_body", False):
                    return b"".join(chunks)
    except TimeoutError:
        return (
            408,
            "deadline_exceeded",
            f"the request's body did not arrive within {BODY_DEADLINE:g}s",
        )


def _explained(send: Send, scope: Scope, headers: dict[str, str]) -> Send:
    """`send` for connectrpc, which refuses a request it cannot route with a bare status (415,
    404, 405) and an empty body: those get a Connect error body saying what to do (any other
    answer goes as it is)."""
    held: Message | None = None

    async def sending(message: Message) -> None:
        nonlocal held
        if message["type"] == "http.response.start" and message["status"] in _BARE_STATUSES:
            held = message  # sent with the body, once it is known to be empty
            return
        if held is not None:
            start, held = held, None
            if not message.get("body") and not message.get("more_body", False):
                why = _bare_status_reason(start["status"], scope, headers)
                body = json.dumps({"code": "unimplemented", "message": why}).encode()
                kept = [
                    (key, value)
                    for key, value in start.get("headers", ())
                    if key.lower() not in (b"content-type", b"content-length")
                ]
                kind = [(b"content-type", b"application/json")]
                await send({**start, "headers": [*kept, *kind]})
                await send({"type": "http.response.body", "body": body})
                return
            await send(start)
        await send(message)

    return sending


# What connectrpc answers with a bare status when it cannot route a request at all.
_BARE_STATUSES = frozenset({404, 405, 415})


def _bare_status_reason(status: int, scope: Scope, headers: dict[str, str]) -> str:
    if status == 415:
        content_type = headers.get("content-type", "")
        # (application/json is refused for a stream too: it said it spoke application/json.)
        return (
            f"unsupported content type {content_type!r}: this port speaks Connect "
            "(application/json or application/proto for a unary call, application/connect+json "
            "or application/connect+proto for a stream) and gRPC-Web "
            "(application/grpc-web+proto; not grpc-web-text)"
        )
    if status == 404:
        return f"no method {scope['path'].removeprefix(RPC_PREFIX)!r} in chat.v1.ChatService"
    return f"{scope['method']} is not allowed here: call a method with POST"


def _replaying(body: bytes, receive: Receive) -> Receive:
    """`receive` for an app: the body read already, then the client's own (its disconnect)."""
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if replayed:
            return await receive()
        replayed = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


def _unacceptable_headers(scope: Scope) -> tuple[int, str, str] | None:
    """Headers gRPC would refuse too: more than MAX_HEADER_BYTES in all (uvicorn bounds only a
    block that arrives in pieces), or a value that is not UTF-8 (which connectrpc would fail
    on with a 500 and a traceback)."""
    size = 0
    for key, value in scope.get("headers", ()):
        size += len(key) + len(value)
        try:
            value.decode("utf-8")
        except UnicodeDecodeError:
            return 400, "invalid_argument", f"header {key.decode('latin-1')!r} is not UTF-8"
    if size > MAX_HEADER_BYTES:
        limit = f"headers of {size:,} bytes; the limit is {MAX_HEADER_BYTES:,}"
        return 431, "resource_exhausted", limit
    return None


def _is_loopback_host(host: str) -> bool:
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    name = name.strip("[]").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _with_headers(send: Send, extra: list[tuple[bytes, bytes]]) -> Send:
    if not extra:
        return send

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            message["headers"] = [*message.get("headers", ()), *extra]
        await send(message)

    return sending


async def _preflight(send: Send, cors: list[tuple[bytes, bytes]]) -> None:
    headers = [
        *cors,
        (b"access-control-allow-methods", b"GET, POST"),
        (b"access-control-allow-headers", CORS_ALLOW_HEADERS.encode()),
        (b"access-control-max-age", b"7200"),
    ]
    await send({"type": "http.response.start", "status": 204, "headers": headers})
    await send({"type": "http.response.body", "body": b""})


async def _refuse(
    send: Send, rpc: bool, headers: dict[str, str], status: int, code: str, message: str
) -> None:
    """Refuse a request before it is served: a Connect error (or a gRPC-Web trailers-only
    status) for an RPC, plain text for anything else."""
    content_type = headers.get("content-type", "")
    if rpc and content_type.startswith("application/connect+"):
        # A Connect stream (the page's Subscribe): its error is the end-of-stream message, in
        # a 200 (a client reads another status as "HTTP 400" and loses the message).
        end = json.dumps({"error": {"code": code, "message": message}}).encode()
        response = [(b"content-type", content_type.encode())]
        await send({"type": "http.response.start", "status": 200, "headers": response})
        await send({"type": "http.response.body", "body": b"\x02" + _frame_length(end) + end})
        return
    if rpc and content_type.startswith("application/grpc"):
        grpc_code = _GRPC_CODES[code]
        response = [
            (b"content-type", content_type.encode()),
            (b"grpc-status", grpc_code),
            (b"grpc-message", message.encode("ascii", "replace").replace(b"%", b"%25")),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": response})
        await send({"type": "http.response.body", "body": b""})
        return
    if rpc:
        body = json.dumps({"code": code, "message": message}).encode()
        kind = b"application/json"
    else:
        body = (message + "\n").encode()
        kind = b"text/plain; charset=utf-8"
    await send(
        {"type": "http.response.start", "status": status, "headers": [(b"content-type", kind)]}
    )
    await send({"type": "http.response.body", "body": body})


def _frame_length(payload: bytes) -> bytes:
    return len(payload).to_bytes(4, "big")


async def _static(scope: Scope, send: Send) -> None:
    """`/` and `/static/<file>`: only files that are in static/ (no subpaths, no dot files)."""
    path: str = scope["path"]
    name = "index.html" if path == "/" else path.removeprefix("/static/")
    if scope["method"] not in ("GET", "HEAD"):
        await _plain(send, 405, "method not allowed", [(b"allow", b"GET, HEAD")])
        return
    if (path != "/" and not path.startswith("/static/")) or not _servable(name):
        await _plain(send, 404, "not found")
        return
    try:
        body = await asyncio.to_thread((STATIC_DIR / name).read_bytes)
    except OSError:
        await _plain(send, 404, "not found")
        return
    content_type = CONTENT_TYPES.get(Path(name).suffix, "application/octet-stream")
    headers = [
        (b"content-type", content_type.encode()),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-cache"),
    ]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})


def _servable(name: str) -> bool:
    """A plain file directly in static/: checked against the directory's listing, so no
    `..`, separator, encoded trick or symlink out of it can name anything else."""
    if not name or name.startswith(".") or "/" in name or "\\" in name:
        return False
    try:
        listing = {entry.name for entry in STATIC_DIR.iterdir() if entry.is_file()}
    except OSError:
        return False
    return name in listing and not (STATIC_DIR / name).is_symlink()


async def _plain(
    send: Send, status: int, text: str, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    headers = [(b"content-type", b"text/plain; charset=utf-8"), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": (text + "\n").encode()})
