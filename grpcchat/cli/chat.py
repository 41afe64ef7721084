"""`grpcchat join` (a chat session) and `grpcchat send` (post and exit)."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from grpcchat.cli.consoles import console
from grpcchat.cli.exits import EXIT_USAGE, fail, run
from grpcchat.cli.options import Room, connection, json_option, name_option, room_option
from grpcchat.cli.posting import post, token_name
from grpcchat.cli.roomarg import room_argument
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
        int,
        typer.Option(
            min=0,
            max=1000,
            help="Recent messages to show per room on entry (with their edits and reactions).",
        ),
    ] = 20,
) -> None:
    """Chat interactively. Type messages; /help lists commands; exit or Ctrl-D leaves.

    In the session: /join ROOM, /leave, /rooms, /who, /msg NAME TEXT,
    /me ACTION, /history N. In a terminal each message line starts with its
    number N, dimmed: /reply N TEXT answers it, /edit [N] TEXT and /delete [N]
    change your own (default: your last), /react N 👍 and /unreact N 👍 react.
    Who is typing shows at the bottom; a room entered with unread messages
    marks where they start (── unread ──); /rooms shows unread counts.

    If the server goes away the session reconnects and resumes where it was,
    nothing missed. With stdin not a terminal, each line read is sent as a
    message; the exit code is then that of the first line refused (see
    `grpcchat send --help`), 0 if every line was sent.

    Examples:
      grpcchat join --name alice --room lobby,games
      then, in the session: /reply 12 sure!  /edit 13 sure, at 5  /react 12 👍
    """
    from grpcchat.cli.interactive import JoinOptions, run_join

    interactive = sys.stdin is not None and sys.stdin.isatty()
    if client.token and (owner := token_name(client.token)):
        name = owner  # the server posts as the token's user, whatever --name says
    if name is None:
        if not interactive:
            fail("--name is required when stdin is not a terminal", EXIT_USAGE)
        name = _ask_name()
    options = JoinOptions(name, _rooms(room), history, interactive)
    code = run(run_join(client, options, console))
    if code:
        raise SystemExit(code)


def _ask_name() -> str:
    """Ask for a name until one is valid: a typo at the prompt is no reason to start over."""
    from grpcchat.cli.output import emit_error
    from grpcchat.core.errors import InvalidInput
    from grpcchat.core.validation import check_name

    while True:
        try:
            typed = typer.prompt("Enter your name")
        except typer.Abort:  # Ctrl-C (or Ctrl-D) at the prompt: as at the chat's
            raise SystemExit(130) from None
        try:
            return check_name(typed)
        except InvalidInput as error:
            emit_error(str(error))


def _change_option(flag: str, help: str) -> Any:
    """An option naming the message a send changes or answers."""
    return typer.Option(flag, metavar="ID", help=help, show_default=False)


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
        str | None, typer.Option("--to", help="Send a direct message to this user instead.")
    ] = None,
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
    edit: Annotated[
        str | None, _change_option("--edit", "Edit your message ID: TEXT is its new text.")
    ] = None,
    delete: Annotated[
        str | None, _change_option("--delete", "Delete your message ID (no TEXT).")
    ] = None,
    react: Annotated[
        str | None, _change_option("--react", "React to message ID: TEXT is the emoji.")
    ] = None,
    unreact: Annotated[
        str | None, _change_option("--unreact", "Take back your reaction TEXT to message ID.")
    ] = None,
    reply_to: Annotated[
        str | None, _change_option("--reply-to", "Send TEXT as a reply to message ID.")
    ] = None,
) -> None:
    """Send messages and exit once the server accepted every one.

    Transient failures are retried with the same key until --timeout.

    Edit, delete or react to a message, or answer it, by its ID: its id
    (as --json prints it) or its seq in --room. One of --edit, --delete,
    --react, --unreact, --reply-to per send; --json prints what the server
    accepted (for a change, the entry that made it).

    Exit codes: 0 sent, 1 local setup problem, 2 bad usage, 3 server
    unreachable or still over a limit (retry later), 4 rejected (bad
    input, no such message, a cap such as a message's 20 emoji), 5 timed
    out, 6 not authenticated or not allowed (someone else's message).

    Examples:
      grpcchat send --name bot "deploy done"
      make 2>&1 | grpcchat send --room ci --json
      grpcchat send --edit 12 "deploy done, for real"
      grpcchat send --react 12 🎉
      grpcchat send --reply-to 12 "thanks!"
      grpcchat send --delete 3f0c0d5f6a8b4a40b7d1f9b2a1e4c7d9
    """
    # The fast path (`grpcchat.cli.fast`) parses these same options without Typer for a
    # plain `grpcchat send`; both end here.
    post(
        client,
        text,
        name=name,
        room=room,
        to=to,
        action=action,
        key=key,
        as_json=as_json,
        edit=edit,
        delete=delete,
        react=react,
        unreact=unreact,
        reply_to=reply_to,
    )


def _rooms(values: list[str] | None) -> tuple[str, ...]:
    rooms = [room_argument(r.strip()) for v in values or [] for r in v.split(",") if r.strip()]
    return tuple(dict.fromkeys(rooms)) or (DEFAULT_ROOM,)
