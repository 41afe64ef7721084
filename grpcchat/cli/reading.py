"""`grpcchat history`, `rooms` and `who`: ask the server once, print a table or JSON."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer

from grpcchat.cli import render
from grpcchat.cli.consoles import console, err_console
from grpcchat.cli.exits import run
from grpcchat.cli.jsonout import message_as_json
from grpcchat.cli.options import Json, Room, connection, name_option
from grpcchat.cli.posting import token_name
from grpcchat.cli.roomarg import room_argument
from grpcchat.client.config import ClientConfig
from grpcchat.core.markers import MAX_SEQ
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
        int,
        typer.Option(min=0, max=MAX_SEQ, help="Only messages before this seq (page backwards)."),
    ] = 0,
    as_json: Json = False,
) -> None:
    """Show the latest messages of a room (oldest first), as `join` does.

    Each message as it is now: edited text marked (edited), a deleted one
    as "message deleted", reactions on a line below it, a reply after a
    quote of what it answers. Edits, deletes and reactions are applied to
    the messages they change, not shown as lines of their own.

    On a terminal each line starts with the message's seq: the ID that
    `send --edit`, `--delete`, `--react` and `--reply-to` take. With --json,
    one object per message with its current state: text, edited, edited_at,
    deleted, reactions (emoji: names), reply_to.

    Examples:
      grpcchat history --room ops --limit 50
      grpcchat history --json | jq 'select(.edited)'
    """
    room = room_argument(room)
    messages = ask(client, lambda chat: chat.latest(room, limit=limit, before=before))
    by_id = {message.id: message for message in messages}
    handles = console.is_terminal
    for message in messages:
        if as_json:
            print(json.dumps(message_as_json(message, state=True)))
        else:
            quoted = by_id.get(message.reply_to) if message.reply_to else None
            post = render.render_post(message, quoted=quoted, handle=handles)
            console.print(post, soft_wrap=True)
    if not messages and not as_json:
        err_console.print(f"[dim]no messages in #{room or 'lobby'}[/]")


@connection
def rooms(
    client: ClientConfig,
    name: Annotated[
        str | None,
        name_option("Show this user's unread counts (with --token: the token's user's)."),
    ] = None,
    as_json: Json = False,
) -> None:
    """List the rooms that have members or history.

    With --name (or a token), each room has that user's unread count:
    messages after their read marker, not counting their own.

    Examples:
      grpcchat rooms
      grpcchat rooms --name alice --json
    """
    if name is None and client.token:
        name = token_name(client.token)
    found = ask(client, lambda chat: chat.rooms(name=name or ""))
    if as_json:
        fields = ("name", "members", "messages", *(("unread",) if name else ()))
        print(json.dumps([{field: getattr(r, field) for field in fields} for r in found]))
    else:
        console.print(render.render_rooms(found, unread=bool(name)))


@connection
def who(client: ClientConfig, room: Room = "", as_json: Json = False) -> None:
    """List who is in a room now."""
    room = room_argument(room)
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
