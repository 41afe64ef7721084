"""Engine URLs fit to print: a password in one never reaches a log line, an error or a terminal."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit


def redacted_url(url: str) -> str:
    """`url` with any password masked: `nats://user:****@host:4222`, and `nats://****@host:4222`
    for a token (a user without a password); each of several servers' own
    (`nats://a:****@h1,b:****@h2`), as the engine reads them."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=",".join(map(_masked, parts.netloc.split(",")))))


def _masked(server: str) -> str:
    userinfo, at, host = server.rpartition("@")
    if not at:
        return server
    user, colon, _ = userinfo.partition(":")
    return f"{user}:****@{host}" if colon else f"****@{host}"
