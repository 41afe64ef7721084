"""`grpcchat join` (a chat session) and `grpcchat send` (post and exit)."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from grpcchat.cli.consoles import console
from grpcchat.cli.exits import fail, run
from grpcchat.cli.options import Room, connection, json_option, name_option, room_option
from grpcchat.cli.posting import post, token_name
from grpcchat.client.config import ClientConfig
from grpcchat.core.models import DEFAULT_ROOM


@connection
def join(
    client: ClientConfig,
    name: Annotated[
        str | None, name_option("Your name (asked if missing; with --token, the token's).")
    ] = None,
    room: Annotated[
        list[str] | None,
        room_option("Room(s) to enter: repeat, or a comma list (default: lobby)."),
    ] = None,
    history: Annotated[
        int, typer.Option(min=0, max=1000, help="Recent messages to show per room on entry.")
    ] = 20,
) -> None:
    """Chat interactively. Type messages; /help lists commands; exit or Ctrl-D leaves.

    In the session: /join ROOM, /leave, /rooms, /who, /msg NAME TEXT, /me ACTION, /history N.
    If the server goes away the session reconnects and resumes where it was, nothing missed.
    With stdin not a terminal, each line read is sent as a message.

    Example: grpcchat join --name alice --room lobby,games
    """
    from grpcchat.cli.interactive import JoinOptions, run_join

    interactive = sys.stdin.isatty()
    if name is None and client.token:
        name = token_name(client.token)
    if name is None:
        if not interactive:
            fail("--name is required when stdin is not a terminal")
        name = typer.prompt("Enter your name")
    options = JoinOptions(name, _rooms(room), history, interactive)
    run(run_join(client, options, console))


@connection
def send(
    client: ClientConfig,
    text: Annotated[
        str | None,
        typer.Argument(help="Message text. Omit it, or pass -, to send each line of stdin."),
    ] = None,
    name: Annotated[
        str | None, name_option("Sender name (default: your login; with --token, the token's).")
    ] = None,
    room: Room = "",
    to: Annotated[
        str, typer.Option("--to", help="Send a direct message to this user instead.")
    ] = "",
    action: Annotated[bool, typer.Option("--me", help="Send as an action (* name text).")] = False,
    key: Annotated[
        str,
        typer.Option(
            help="Idempotency key: repeating a send with the same key posts it once. "
            "Default: a fresh key per message (retries inside one run never double).",
            show_default=False,
        ),
    ] = "",
    as_json: Annotated[bool, json_option("Print one JSON object per accepted message.")] = False,
) -> None:
    """Send messages and exit once the server accepted every one.

    Transient failures are retried with the same key until --timeout.
    Exit codes: 0 sent, 1 local setup problem, 3 server unreachable, 4 rejected, 5 timed out,
    6 not authenticated.

    Examples: grpcchat send --name bot "deploy done"; make 2>&1 | grpcchat send --room ci --json
    """
    # The fast path (`grpcchat.cli.fast`) parses these same options without Typer for a
    # plain `grpcchat send`; both end here.
    post(client, text, name=name, room=room, to=to, action=action, key=key, as_json=as_json)


def _rooms(values: list[str] | None) -> tuple[str, ...]:
    rooms = [r.strip().lstrip("#") for v in values or [] for r in v.split(",") if r.strip()]
    return tuple(dict.fromkeys(rooms)) or (DEFAULT_ROOM,)
