"""`grpcchat health`: ask a server once whether it is serving, for scripts and container
probes. Exit 0 on `SERVING`, 1 on anything else (draining, unreachable, no answer in time)."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from typing import Annotated

import typer

from grpcchat.cli.exits import EXIT_FAILURE, EXIT_INTERRUPTED, fail
from grpcchat.cli.options import connection
from grpcchat.client.config import ClientConfig
from grpcchat.core.errors import ChatError

# A probe answers quickly or not at all: a shorter wait than the other commands' default.
DEFAULT_HEALTH_TIMEOUT = 5.0


def timeout_default(seconds: float) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Give a command that has the connection options (`connection`) another --timeout
    default: Typer reads defaults from the signature `connection` advertises."""

    def decorate(command: Callable[..., None]) -> Callable[..., None]:
        signature = inspect.signature(command)
        command.__signature__ = signature.replace(  # type: ignore[attr-defined]
            parameters=[
                p.replace(default=seconds) if p.name == "timeout" else p
                for p in signature.parameters.values()
            ]
        )
        return command

    return decorate


@timeout_default(DEFAULT_HEALTH_TIMEOUT)
@connection
def health(
    client: ClientConfig,
    service: Annotated[
        str,
        typer.Option(
            help='Service to ask about: "" for the whole server, or chat.v1.ChatService.',
        ),
    ] = "",
) -> None:
    """Check once whether a server is serving: print SERVING and exit 0, else exit 1.

    For scripts and container probes. A draining server answers NOT_SERVING;
    an unreachable one, or no answer within --timeout, is one error line.

    Example: grpcchat health --addr localhost:4000
    """
    from grpcchat.client.health import SERVING, check_health
    from grpcchat.client.probe import explain

    try:
        status = asyncio.run(check_health(client, service))
    except ChatError as error:
        fail(str(explain(error)), EXIT_FAILURE)
    except KeyboardInterrupt:
        raise SystemExit(EXIT_INTERRUPTED) from None
    print(status, flush=True)
    if status != SERVING:
        raise SystemExit(EXIT_FAILURE)
