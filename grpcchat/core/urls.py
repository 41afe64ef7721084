"""Engine URLs fit to print: a password in one never reaches a log line, an error or a terminal."""

from __future__ import annotations


def redacted_url(url: str) -> str:
    """`url` with any password masked: `nats://user:****@host:4222`, and `nats://****@host:4222`
    for a token (a user without a password); each of several servers' own
    (`nats://a:****@h1,b:****@h2`), as the engine reads them."""
    # Split by hand, not by urlsplit, which raises for some URLs (an unclosed IPv6 bracket):
    # the error that says such a URL is wrong must not fail on showing it.
    scheme, sep, rest = url.partition("://")
    end = min((at for at in map(rest.find, "/?#") if at >= 0), default=len(rest))
    netloc = rest[:end]
    if not sep or "@" not in netloc:
        return url
    return f"{scheme}{sep}{','.join(map(_masked, netloc.split(',')))}{rest[end:]}"


def _masked(server: str) -> str:
    userinfo, at, host = server.rpartition("@")
    if not at:
        return server
    user, colon, _ = userinfo.partition(":")
    return f"{user}:****@{host}" if colon else f"****@{host}"
