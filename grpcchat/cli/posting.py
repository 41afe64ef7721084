"""What `grpcchat send` does once its options are parsed, shared by the Typer command
(`grpcchat.cli.chat.send`) and the fast path (`grpcchat.cli.fast`) so both behave alike.
Neither Typer nor Rich is imported here; Rich only to print on a terminal."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from grpcchat.cli.exits import EXIT_USAGE, fail, run
from grpcchat.cli.jsonout import message_as_json
from grpcchat.cli.lines import sent_line
from grpcchat.cli.output import emit
from grpcchat.client.config import AddressError, ClientConfig

if TYPE_CHECKING:
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
    to: str,
    action: bool,
    key: str,
    as_json: bool,
) -> None:
    """Send `text` (None or "-": each line of stdin) and print each accepted message."""
    from grpcchat.client.oneshot import send_lines

    lines = [text] if text not in (None, "-") else stdin_lines()
    if key and len(lines) > 1:
        fail("--key applies to a single message; stdin has several")
    sender = name if name is not None else token_name(client.token) or _login()

    def accepted(sent: Sent) -> None:
        if as_json:
            import json

            print(json.dumps(message_as_json(sent.message, sent.duplicate)), flush=True)
        else:
            emit(sent_line(sent.message, sent.duplicate))

    run(send_lines(client, sender, lines, accepted, room=room, to=to, action=action, key=key))


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
    import getpass

    return getpass.getuser()


def stdin_lines() -> list[str]:
    if sys.stdin.isatty():
        from grpcchat.cli.consoles import err_console

        err_console.print("[dim]reading messages from stdin, one per line; Ctrl-D ends[/]")
    return [line.rstrip("\n") for line in sys.stdin if line.strip()]
