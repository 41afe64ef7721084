"""The `grpcchat` entry point, with a fast path for a one-shot `grpcchat send`.

Building the Typer app imports Typer, Rich and every command's module, and Typer 0.29 coerces
each parameter through pydantic: together some 200 ms, more than the send itself. So `main`
first reads `send`'s own options the way Click would, and when it can read them all it sends
without Typer (`grpcchat.cli.posting` is the command's body for both paths); a lone
`grpcchat --version` (or `-V`) is printed here too. Anything else
goes to the Typer app: another command, `--help`, or whatever this parser does not reproduce
exactly (an unknown option, a missing value, an extra argument, a value Typer would refuse or
coerce otherwise, shell completion), so usage errors are always Click's own.

The tables below mirror `grpcchat.cli.chat.send` and `grpcchat.cli.options.client_config`;
tests/test_startup.py checks them against the Typer command.
"""

from __future__ import annotations

import errno
import gc
import os
import sys
from collections.abc import Mapping, Sequence
from typing import NamedTuple, NoReturn

from grpcchat.cli.grpclogs import set_grpc_core_logs
from grpcchat.cli.version import VERSION_OPTIONS, version_line
from grpcchat.client.config import DEFAULT_ADDR, DEFAULT_TIMEOUT, MAX_TIMEOUT, MIN_TIMEOUT

COMMAND = "send"
# Options taking a value: each spelling, its parameter, its environment variable.
VALUE_OPTIONS: dict[str, str] = {
    "--name": "name",
    "-n": "name",
    "--room": "room",
    "-r": "room",
    "--to": "to",
    "--key": "key",
    "--addr": "addr",
    "-a": "addr",
    "--timeout": "timeout",
    "--token": "token",
    "--tls-ca": "tls_ca",
    "--tls-cert": "tls_cert",
    "--tls-key": "tls_key",
    "--edit": "edit",
    "--delete": "delete",
    "--react": "react",
    "--unreact": "unreact",
    "--reply-to": "reply_to",
}
FLAGS: dict[str, str] = {"--me": "action", "--json": "as_json", "--tls": "tls"}
ENVVARS: dict[str, str] = {
    "name": "GRPCCHAT_NAME",
    "room": "GRPCCHAT_ROOM",
    "addr": "GRPCCHAT_ADDR",
    "timeout": "GRPCCHAT_TIMEOUT",
    "token": "GRPCCHAT_TOKEN",
    "tls": "GRPCCHAT_TLS",
    "tls_ca": "GRPCCHAT_TLS_CA",
    "tls_cert": "GRPCCHAT_TLS_CERT",
    "tls_key": "GRPCCHAT_TLS_KEY",
}
# Values Typer's (pydantic's) coercion turns into exactly `float(text)` and `bool`; anything
# else, however valid, is left to Typer.
_BOOLEANS = {
    **dict.fromkeys(("1", "true", "t", "yes", "y", "on"), True),
    **dict.fromkeys(("0", "false", "f", "no", "n", "off"), False),
}


class SendCommand(NamedTuple):
    """A `grpcchat send` command line, read as Typer reads it. (A NamedTuple: a dataclass
    this size takes a millisecond to define, all of it on every send.)"""

    text: str | None = None
    name: str | None = None
    room: str = ""
    to: str | None = None
    action: bool = False
    key: str = ""
    as_json: bool = False
    addr: str = DEFAULT_ADDR
    timeout: float = DEFAULT_TIMEOUT
    token: str = ""
    tls: bool = False
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    # None when not given: an empty value given is refused (`--to ""` is no direct message).
    edit: str | None = None
    delete: str | None = None
    react: str | None = None
    unreact: str | None = None
    reply_to: str | None = None


# The options that make a send change (or answer) an earlier message: `posting.post` checks
# how they combine, for both paths.
CHANGES = ("edit", "delete", "react", "unreact", "reply_to")


def main() -> None:
    set_grpc_core_logs("ERROR")
    try:
        if len(sys.argv) == 2 and sys.argv[1] in VERSION_OPTIONS:  # as the Typer app's
            print(version_line())
            return
        command = parse_send(sys.argv[1:], os.environ)
        if command is None:
            try:
                from grpcchat.cli.app import app
            except KeyboardInterrupt:  # Ctrl-C while the app loads: as Typer ends a command
                raise SystemExit(130) from None
            app()
        else:
            run_send(command)
    except OSError as error:  # any command's output, on either path
        from grpcchat.cli.exits import fail_to_write, is_write_failure

        if not is_write_failure(error):
            raise
        fail_to_write(error)


def parse_send(args: Sequence[str], environ: Mapping[str, str]) -> SendCommand | None:
    """`args` (after the program name) as a `grpcchat send`, or None for the Typer app.

    Click's rules: options and the argument in any order, `--opt=value`, `-nVALUE`, a value
    taken whatever it looks like, the last of a repeated option wins, `--` ends the options,
    a lone `-` is an argument; an option not given takes its environment variable (if set and
    not empty), else its default.
    """
    if not args or args[0] != COMMAND or any(k.endswith("_COMPLETE") for k in environ):
        return None
    given: dict[str, str] = {}
    flags: set[str] = set()
    arguments: list[str] = []
    pending = list(args[1:])
    while pending:
        arg = pending.pop(0)
        if arg == "--":
            arguments += pending
            break
        if arg[:1] != "-" or len(arg) == 1:
            arguments.append(arg)
            continue
        option, equals, value = arg.partition("=")
        has_value = bool(equals)
        if option in FLAGS:
            if has_value:
                return None  # "Option '--me' does not take a value."
            flags.add(FLAGS[option])
            continue
        if option.startswith("--"):
            if option not in VALUE_OPTIONS:
                return None  # --help, or an option `send` does not have
        else:
            # Short options: `-n bot`, `-nbot`, and `-n=bot` (the value "=bot", as in Click).
            option, has_value, value = arg[:2], len(arg) > 2, arg[2:]
            if option not in VALUE_OPTIONS:
                return None
        if not has_value:
            if not pending:
                return None  # "Option '--name' requires an argument."
            value = pending.pop(0)
        given[VALUE_OPTIONS[option]] = value
    if len(arguments) > 1:
        return None  # "Got unexpected extra argument"

    def lookup(parameter: str) -> str | None:
        if parameter in given:
            return given[parameter]
        envvar = ENVVARS.get(parameter)
        return (environ.get(envvar) or None) if envvar else None

    texts = (
        "name",
        "room",
        "to",
        "key",
        "addr",
        "token",
        "tls_ca",
        "tls_cert",
        "tls_key",
        *CHANGES,
    )
    values: dict[str, object] = {p: v for p in texts if (v := lookup(p)) is not None}
    if (timeout := lookup("timeout")) is not None:
        if not _plain_number(timeout) or not MIN_TIMEOUT <= float(timeout) <= MAX_TIMEOUT:
            return None  # the Typer app explains
        values["timeout"] = float(timeout)
    for flag in FLAGS.values():
        if flag in flags:
            values[flag] = True
        elif (setting := lookup(flag)) is not None:
            if not setting.isascii() or setting.lower() not in _BOOLEANS:
                return None
            values[flag] = _BOOLEANS[setting.lower()]
    return SendCommand(text=arguments[0] if arguments else None, **values)  # type: ignore[arg-type]


def _plain_number(text: str) -> bool:
    """`12` or `1.5`: ASCII digits, at most one dot with digits either side."""
    whole, dot, fraction = text.partition(".")
    parts = (whole, fraction) if dot else (whole,)
    return all(part.isascii() and part.isdigit() and len(part) <= 9 for part in parts)


def run_send(command: SendCommand) -> None:
    """Send as the Typer command would, ending as Typer ends one (its `_main`): Ctrl-C exits
    130, a closed stdout 1, and an unexpected exception gets Typer's traceback.

    The garbage collector is kept off objects that cannot be garbage (measured here: some
    5 ms while importing and 30 ms at exit, of a send of about 110 ms): the modules are
    imported with collection paused, then frozen, and at the end all that is left is frozen,
    so the interpreter's collections at exit skip it (refcounting still frees it all).
    """
    try:
        gc.disable()
        try:
            from grpcchat.cli.posting import build_config, post
            from grpcchat.client import oneshot  # noqa: F401  (what `post` will import)
        finally:
            gc.freeze()
            gc.enable()
        client = build_config(
            addr=command.addr,
            timeout=command.timeout,
            token=command.token,
            tls=command.tls,
            tls_ca=command.tls_ca,
            tls_cert=command.tls_cert,
            tls_key=command.tls_key,
        )
        post(
            client,
            command.text,
            name=command.name,
            room=command.room,
            to=command.to,
            action=command.action,
            key=command.key,
            as_json=command.as_json,
            edit=command.edit,
            delete=command.delete,
            react=command.react,
            unreact=command.unreact,
            reply_to=command.reply_to,
        )
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    except OSError as error:
        from grpcchat.cli.exits import is_write_failure

        if is_write_failure(error):
            raise  # main says so in one line
        if error.errno != errno.EPIPE:
            _typer_traceback(error)
        _quiet_broken_pipe()
    except Exception as error:
        _typer_traceback(error)
    finally:
        gc.freeze()


def _quiet_broken_pipe() -> NoReturn:
    from typer._click.utils import PacifyFlushWrapper

    sys.stdout = PacifyFlushWrapper(sys.stdout)
    sys.stderr = PacifyFlushWrapper(sys.stderr)
    sys.exit(1)


def _typer_traceback(error: Exception) -> NoReturn:
    """Re-raise `error` marked as Typer marks an exception a command raised, so Typer's
    excepthook prints it as it would have."""
    from typer.main import _typer_developer_exception_attr_name, except_hook
    from typer.models import DeveloperExceptionConfig

    from grpcchat.cli.app import app

    config = DeveloperExceptionConfig(
        pretty_exceptions_enable=app.pretty_exceptions_enable,
        pretty_exceptions_show_locals=app.pretty_exceptions_show_locals,
        pretty_exceptions_short=app.pretty_exceptions_short,
    )
    setattr(error, _typer_developer_exception_attr_name, config)
    sys.excepthook = except_hook
    raise error
