"""What `grpcchat send` does once its options are parsed, shared by the Typer command
(`grpcchat.cli.chat.send`) and the fast path (`grpcchat.cli.fast`) so both behave alike.
Neither Typer nor Rich is imported here; Rich only to print on a terminal."""

from __future__ import annotations

from typing import TYPE_CHECKING

from grpcchat.cli.exits import EXIT_USAGE, fail, run
from grpcchat.cli.jsonout import message_as_json
from grpcchat.cli.lines import sent_line
from grpcchat.cli.output import emit
from grpcchat.cli.roomarg import room_argument
from grpcchat.client.config import AddressError, ClientConfig

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from grpcchat.client.events import Sent


def build_config(
    *, addr: str, timeout: float, token: str, tls: bool, tls_ca: str, tls_cert: str, tls_key: str
) -> ClientConfig:
    """The connection options as one validated `ClientConfig` (or exit saying what is wrong:
    2 for a bad --addr list, as for any bad option; 1 otherwise)."""
    try:
        return ClientConfig(
            addr=addr,
            timeout=timeout,
            token=token,
            tls=tls,
            tls_ca=tls_ca,
            tls_cert=tls_cert,
            tls_key=tls_key,
        )
    except AddressError as error:
        fail(str(error), EXIT_USAGE)
    except ValueError as error:
        fail(str(error))


def post(
    client: ClientConfig,
    text: str | None,
    *,
    name: str | None,
    room: str,
    to: str | None,
    action: bool,
    key: str,
    as_json: bool,
    edit: str | None = None,
    delete: str | None = None,
    react: str | None = None,
    unreact: str | None = None,
    reply_to: str | None = None,
) -> None:
    """Send `text` (None or "-": each line of stdin) and print each accepted message.

    At most one of `edit`, `delete`, `react`, `unreact` (a message id, or its seq in `room`)
    changes that message instead: an edit's new text, a reaction's emoji is `text`; `reply_to`
    makes each message a reply. Each is None when not given; given empty, it is refused (a
    script's `--to "$USER"` with USER unset must not post the text to the room)."""
    changes = {
        "--edit": edit,
        "--delete": delete,
        "--react": react,
        "--unreact": unreact,
        "--reply-to": reply_to,
    }
    room = room_argument(room)
    for option, target in (("--to", to), *changes.items()):
        if target is not None and not target.strip():
            what = "a NAME" if option == "--to" else "a message ID"
            fail(f"{option} needs {what}, got an empty or blank value", EXIT_USAGE)
    given = [option for option, target in changes.items() if target is not None]
    if len(given) > 1:
        fail(f"{given[0]} and {given[1]} cannot be used together: one change per send", EXIT_USAGE)
    if given and to is not None:
        fail(f"{given[0]} is for room messages: direct messages are not kept", EXIT_USAGE)
    sender = name if name is not None else token_name(client.token) or _login()
    if given and given[0] != "--reply-to":
        option = given[0]
        if action:
            fail(f"--me is for new messages, not {option}", EXIT_USAGE)
        body = _change_text(option, text)
        _post_change(client, sender, option, changes[option] or "", body, room, key, as_json)
        return
    from grpcchat.client.oneshot import send_lines

    lines: list[str] | AsyncIterator[str]
    if text not in (None, "-"):
        lines = [text]
    else:
        from grpcchat.cli import stdin

        if key:
            lines = stdin.read_lines()
            if len(lines) > 1:
                fail("--key applies to a single message; stdin has several", EXIT_USAGE)
        else:
            lines = stdin.lines_as_they_come()

    def accepted(sent: Sent) -> None:
        _print_sent(sent, as_json)

    run(
        send_lines(
            client,
            sender,
            lines,
            accepted,
            room=room,
            to=to or "",
            action=action,
            key=key,
            reply_to=reply_to or "",
        )
    )


def _change_text(option: str, text: str | None) -> str:
    """What goes with `option`: an edit's new text or a reaction's emoji (the argument, or the
    one line of stdin: an edit's without an argument, either's for `-`), nothing for a delete;
    or exit 2 saying what is missing."""
    if option == "--delete":
        if text is not None:
            fail(f"--delete takes no text (got {text!r})", EXIT_USAGE)
        return ""
    reacting = option in ("--react", "--unreact")
    if reacting and text is None:
        fail(f"{option} ID EMOJI: the emoji is missing", EXIT_USAGE)
    if text not in (None, "-"):
        assert text is not None
        return text
    from grpcchat.cli import stdin

    lines = stdin.read_lines()
    if len(lines) != 1:
        what = "EMOJI: one emoji" if reacting else "TEXT: one text"
        fail(f"{option} ID {what}; stdin had {len(lines)} lines", EXIT_USAGE)
    return lines[0]


def _post_change(
    client: ClientConfig,
    sender: str,
    option: str,
    target: str,
    text: str,
    room: str,
    key: str,
    as_json: bool,
) -> None:
    from grpcchat.client.oneshot import send_relation
    from grpcchat.core.models import RelationKind

    kind = RelationKind(option.removeprefix("--"))
    sent = run(send_relation(client, sender, kind, target, text, room=room, key=key))
    _print_sent(sent, as_json)


def _print_sent(sent: Sent, as_json: bool) -> None:
    if as_json:
        import json

        print(json.dumps(message_as_json(sent.message, sent.duplicate)), flush=True)
    else:
        emit(sent_line(sent.message, sent.duplicate))


def token_name(token: str) -> str | None:
    """The user name inside a token, read without verifying it (the server verifies)."""
    if not token:
        return None
    import jwt

    try:
        name = jwt.decode(token, options={"verify_signature": False}).get("sub")
    except jwt.InvalidTokenError:
        return None
    return name if isinstance(name, str) else None


def _login() -> str:
    """The login name, the sender when neither --name nor a token names one."""
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):  # a uid with no passwd entry and no USER, LOGNAME...
        fail("cannot tell who you are (no login name): give --name", EXIT_USAGE)
