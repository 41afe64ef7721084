"""`grpcchat history`, `rooms` and `who`: ask the server once, print a table or JSON."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer

from grpcchat.cli import render
from grpcchat.cli.consoles import console, err_console
from grpcchat.cli.exits import run
from grpcchat.cli.jsonout import message_as_json
from grpcchat.cli.options import Json, Room, connection
from grpcchat.client.config import ClientConfig
from grpcchat.core.models import DEFAULT_ROOM

if TYPE_CHECKING:
    from grpcchat.client import ChatClient

T = TypeVar("T")


@connection
def history(
    client: ClientConfig,
    room: Room = "",
    limit: Annotated[int, typer.Option(min=1, max=1000, help="How many messages.")] = 20,
    before: Annotated[
        int, typer.Option(min=0, help="Only messages before this seq (page backwards).")
    ] = 0,
    as_json: Json = False,
) -> None:
    """Show the latest messages of a room (oldest first), as `join` does."""
    latest = ask(
        client, lambda chat: chat.history(room, limit=limit, before=before, newest_first=True)
    )
    messages = latest[::-1]
    for message in messages:
        if as_json:
            print(json.dumps(message_as_json(message)))
        else:
            console.print(render.render_message(message), soft_wrap=True)
    if not messages and not as_json:
        err_console.print(f"[dim]no messages in #{room or 'lobby'}[/]")


@connection
def rooms(client: ClientConfig, as_json: Json = False) -> None:
    """List the rooms that have members or history."""
    found = ask(client, lambda chat: chat.rooms())
    if as_json:
        print(json.dumps([asdict(r) for r in found]))
    else:
        console.print(render.render_rooms(found))


@connection
def who(client: ClientConfig, room: Room = "", as_json: Json = False) -> None:
    """List who is in a room now."""
    members = ask(client, lambda chat: chat.members(room))
    if as_json:
        print(json.dumps({"room": room or DEFAULT_ROOM, "members": members}))
    else:
        console.print(render.render_members(room or DEFAULT_ROOM, members))


def ask(config: ClientConfig, question: Callable[[ChatClient], Awaitable[T]]) -> T:
    """Connect, make one call, close: the answer, or one red line and an exit code."""
    from grpcchat.client import ChatClient

    async def asking() -> T:
        async with ChatClient(config) as chat:
            return await question(chat)

    return run(asking())
