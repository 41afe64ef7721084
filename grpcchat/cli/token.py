"""`grpcchat token`: mint a signed token for a user."""

from __future__ import annotations

from typing import Annotated

import typer

from grpcchat.cli.durations import parse_duration
from grpcchat.cli.exits import EXIT_USAGE, fail
from grpcchat.cli.options import auth_secret_option
from grpcchat.core.errors import ChatError


def token(
    name: Annotated[str, typer.Argument(help="The user the token speaks for.")],
    ttl: Annotated[str, typer.Option(help="Lifetime: 30m, 24h, 7d, 1h30m...")] = "24h",
    secret: Annotated[str, auth_secret_option("The server's secret.")] = "",
) -> None:
    """Mint a signed token for NAME (use the secret the server runs with)."""
    from grpcchat.server.auth import TokenAuthority

    if not secret:
        fail("no secret: pass --auth-secret or set GRPCCHAT_AUTH_SECRET")
    lifetime = parse_duration(ttl)
    try:
        authority = TokenAuthority(secret)
    except (ValueError, ChatError) as error:
        fail(str(error))
    try:
        print(authority.mint(name, lifetime))
    except ValueError as error:  # the lifetime (0s, or past the year 9999): a bad option value
        fail(f"--ttl {ttl}: {error}", EXIT_USAGE)
    except ChatError as error:  # the name
        fail(str(error))
