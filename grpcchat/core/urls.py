"""Engine URLs fit to print: a password in one never reaches a log line, an error or a terminal."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit


def redacted_url(url: str) -> str:
    """`url` with any password masked: `nats://user:****@host:4222`, and `nats://****@host:4222`
    for a token (a user without a password)."""
    parts = urlsplit(url)
    userinfo, at, hosts = parts.netloc.rpartition("@")
    if not at:
        return url
    user, colon, _ = userinfo.partition(":")
    masked = f"{user}:****" if colon else "****"
    return urlunsplit(parts._replace(netloc=f"{masked}@{hosts}"))
