"""The small things an operator expects, through the real command: `grpcchat --version`,
`grpcchat health` (a probe's exit code), `grpcchat serve --check-config` (the effective
configuration, secrets masked, nothing bound or opened) and shell completion."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path

import grpc
import pytest
import trustme

from grpcchat.client import ChatClient
from grpcchat.client.config import ClientConfig
from grpcchat.server import ChatServer
from grpcchat.server.config import ServerConfig
from tests.conftest import cli_env, run_cli, run_cli_async

SECRET = "s3cret-" + "x" * 40
# The console script pip installed: `main` with the fast path, named as users run it.
CONSOLE_SCRIPT = Path(sys.executable).parent / "grpcchat"
needs_console_script = pytest.mark.skipif(
    not CONSOLE_SCRIPT.exists(), reason="grpcchat is not installed as a console script"
)


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def held_port() -> Iterator[int]:
    """A port something else is listening on: a server could not bind it."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield int(holder.getsockname()[1])


# -- --version -----------------------------------------------------------------------------


@pytest.mark.parametrize("option", ["--version", "-V"])
def test_version_prints_the_installed_version_and_exits_0(option: str) -> None:
    code, out, err = run_cli(option)
    assert (code, out, err) == (0, f"grpcchat {metadata.version('grpcchat')}\n", "")


@needs_console_script
@pytest.mark.parametrize("option", ["--version", "-V"])
def test_version_through_the_console_script_loads_neither_grpc_nor_typer(option: str) -> None:
    done = subprocess.run(
        [sys.executable, "-X", "importtime", str(CONSOLE_SCRIPT), option],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=30,
    )
    assert done.returncode == 0
    assert done.stdout == f"grpcchat {metadata.version('grpcchat')}\n"
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines()}
    assert not imported & {"grpc", "typer", "rich", "click", "pydantic"}


def test_version_after_other_options_goes_through_typer_alike() -> None:
    code, out, _ = run_cli("--version", "serve")
    assert (code, out) == (0, f"grpcchat {metadata.version('grpcchat')}\n")


# -- health --------------------------------------------------------------------------------


async def test_health_of_a_live_server_is_serving(addr: str) -> None:
    for service in ([], ["--service", "chat.v1.ChatService"]):
        code, out, err = await run_cli_async("health", "--addr", addr, *service, timeout=20)
        assert (code, out, err) == (0, "SERVING\n", "")


async def test_health_takes_the_address_from_the_environment(addr: str) -> None:
    env = cli_env(GRPCCHAT_ADDR=addr)
    code, out, _ = await run_cli_async("health", env=env, timeout=20)
    assert (code, out) == (0, "SERVING\n")


async def test_health_of_a_draining_server_is_not_serving(server: ChatServer, addr: str) -> None:
    # What a drain does first (then it stops taking calls): report NOT_SERVING.
    server._set_serving(False)
    code, out, err = await run_cli_async("health", "--addr", addr, timeout=20)
    assert (code, out, err) == (1, "NOT_SERVING\n", "")


async def test_health_of_an_unknown_service_is_one_error_line(addr: str) -> None:
    code, out, err = await run_cli_async("health", "--addr", addr, "--service", "nope", timeout=20)
    assert (code, out) == (1, "")
    assert err.splitlines() == [f"error: the server at {addr} knows no service 'nope'"]


def test_health_of_a_closed_port_exits_1_within_the_timeout(closed_port: int) -> None:
    addr = f"127.0.0.1:{closed_port}"
    started = time.monotonic()
    code, out, err = run_cli("health", "--addr", addr, "--timeout", "3", timeout=20)
    elapsed = time.monotonic() - started
    assert (code, out) == (1, "")
    assert len(err.splitlines()) == 1
    assert err.startswith(f"error: cannot reach a chat server at {addr}")
    assert elapsed < 3 + 5  # the timeout, plus starting Python on a busy machine


def test_health_of_a_server_that_never_answers_exits_1_at_the_timeout() -> None:
    released = threading.Event()

    def hang(request: bytes, context: grpc.ServicerContext) -> bytes:
        released.wait(10)
        return b""

    server = grpc.server(ThreadPoolExecutor(max_workers=2))
    handler = grpc.unary_unary_rpc_method_handler(hang)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("grpc.health.v1.Health", {"Check": handler}),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        started = time.monotonic()
        code, out, err = run_cli("health", "--addr", f"127.0.0.1:{port}", "--timeout", "1")
        elapsed = time.monotonic() - started
    finally:
        released.set()
        server.stop(0)
    assert (code, out) == (1, "")
    assert err.splitlines() == [f"error: no answer from 127.0.0.1:{port} in time"]
    assert 1 <= elapsed < 1 + 5


def test_health_has_a_bounded_default_timeout() -> None:
    code, out, _ = run_cli("health", "--help")
    assert code == 0
    assert "--timeout" in out
    assert "5.0" in out
    assert "--service" in out


# -- serve --check-config ------------------------------------------------------------------


def settings(out: str) -> dict[str, str]:
    pairs = (line.partition(" = ") for line in out.splitlines())
    return {name: value for name, sep, value in pairs if sep}


def test_check_config_prints_flags_and_env_with_the_secret_masked(
    held_port: int, tmp_path: Path
) -> None:
    env = cli_env(GRPCCHAT_AUTH_SECRET=SECRET, GRPCCHAT_RATE="7", GRPCCHAT_HOST="127.0.0.1")
    code, out, err = run_cli(
        "serve",
        "--check-config",
        "--port",
        str(held_port),
        "--data-dir",
        str(tmp_path),
        "--keep-days",
        "2",
        "--max-sessions",
        "30",
        env=env,
        timeout=20,
    )
    assert (code, err) == (0, "")
    assert SECRET not in out
    shown = settings(out)
    assert len(shown) == len(out.splitlines())  # nothing but `name = value` in a pipe
    assert shown["auth_secret"] == "****"
    assert shown["port"] == str(held_port)
    assert shown["host"] == "127.0.0.1"
    assert shown["limits.rate"] == "7.0"
    assert shown["limits.burst"] == "21.0"
    assert shown["limits.max_sessions"] == "30"
    assert shown["retention.max_age"] == "2d"
    assert shown["store_url"] == f"sqlite://{tmp_path / 'history.db'}"
    assert shown["log_level"] == "info"
    # Nothing was opened: the default store would have created its database.
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("setting", "history"),
    [
        ({"GRPCCHAT_DATA_DIR": "~/chat"}, "chat/history.db"),
        ({"GRPCCHAT_STORE": "sqlite://~/kept.db"}, "kept.db"),
    ],
)
def test_a_home_written_as_tilde_is_the_home(
    tmp_path: Path, setting: dict[str, str], history: str
) -> None:
    """Where no shell expands it (a unit file's Environment=), `~` made a directory named `~`
    in the working directory: a new, empty history from anywhere else."""
    home = tmp_path / "home"
    done = run_cli("serve", "--check-config", env=cli_env(HOME=str(home), **setting), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"store_url = sqlite://{home / history}" in done.stdout


def test_check_config_shows_an_unset_secret_and_the_tls_paths_not_their_contents(
    tmp_path: Path,
) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    leaf = trustme.CA().issue_cert("localhost")
    cert.write_bytes(b"".join(pem.bytes() for pem in leaf.cert_chain_pems))
    key.write_bytes(leaf.private_key_pem.bytes())
    code, out, err = run_cli(
        "serve",
        "--check-config",
        "--store",
        "memory://",
        "--tls-cert",
        str(cert),
        "--tls-key",
        str(key),
        timeout=20,
    )
    assert (code, err) == (0, "")
    shown = settings(out)
    assert shown["auth_secret"] == "not set"
    assert (shown["tls_cert"], shown["tls_key"]) == (str(cert), str(key))
    assert "-----BEGIN" not in out


def test_every_config_field_is_shown() -> None:
    from grpcchat.cli.settings import effective
    from grpcchat.server.config import ServerConfig

    code, out, _ = run_cli("serve", "--check-config", "--store", "memory://", timeout=20)
    assert code == 0
    names = [name for name, _value, _secret in effective(ServerConfig(store="memory://"))]
    assert list(settings(out))[: len(names)] == names


@pytest.mark.parametrize(
    "bad",
    [
        ["--tls-cert", "cert.pem"],  # no key
        ["--auth-secret", "short"],
        ["--tls-cert", "/nonexistent/cert.pem", "--tls-key", "/nonexistent/key.pem"],
        ["--port", "70000"],  # refused by the option itself (usage error)
        ["--max-connection-age", "3000000"],  # past gRPC's 32-bit milliseconds
        ["--max-connection-age", "10", "--max-connection-age-grace", "1e300"],
        ["--store", "redis://u:short@h"],  # unknown, and its password masked
        ["--store", "sqlite://"],
        # Options in a file URL became part of its name (a file `q.db?mode=ro` was made).
        ["--store", "sqlite:///nonexistent/q.db?mode=ro"],
        ["--store", "memory://shared"],
        ["--port", "14600", "--metrics-port", "14600"],  # the second would fail to bind
        ["--metrics-port", "14602", "--web-port", "14602"],
        # Past what gRPC's call limit or an engine's integers hold; not a number of seconds.
        ["--max-sessions", "3000000000"],
        ["--keep-messages", "99999999999999999999999"],
        ["--grace", "inf"],
        # A NATS URL's options, checked before any connection (127.0.0.1:1 takes none).
        ["--broker", "nats://127.0.0.1:1?replicas=9"],
        ["--broker", "nats://127.0.0.1:1?bogus=1"],
        ["--store", "nats://127.0.0.1:1?stream=a.b"],
    ],
)
def test_a_bad_config_fails_as_serve_does(bad: list[str], held_port: int) -> None:
    names_history = {"--store", "--broker"} & set(bad)
    common = bad if names_history else ["--store", "memory://", *bad]
    if "--port" not in bad:
        # Should serve get past the config, it fails to bind instead of serving.
        common += ["--port", str(held_port)]
    checked = run_cli("serve", "--check-config", *common, timeout=20)
    served = run_cli("serve", *common, timeout=20)
    assert checked.returncode == served.returncode != 0
    assert checked.stderr == served.stderr
    assert checked.stdout == ""
    if "--port" not in bad:
        assert len(checked.stderr.splitlines()) == 1
        assert checked.stderr.startswith("error: ")
        assert "short" not in checked.stderr


async def test_a_data_dir_may_have_any_name(tmp_path: Path) -> None:
    """Not held to the rule for a --store URL's path (no `?` or `#`, which look like options):
    the history URL made from it was refused at start."""
    data_dir = tmp_path / "chat #2?"
    config = ServerConfig(port=0, data_dir=str(data_dir))
    async with ChatServer(config) as server:
        addr = f"127.0.0.1:{server.port}"
        async with ChatClient(ClientConfig(addr=addr, timeout=5)) as client:
            await client.send("ann", "kept")
    assert (data_dir / "history.db").is_file()


def test_workers_without_nats_server_fail_check_config_as_serve_does(held_port: int) -> None:
    env = cli_env(PATH="/usr/bin:/bin")  # without this environment's nats-server
    args = ["--workers", "2", "--port", str(held_port), "--data-dir", "/nonexistent/x"]
    checked = run_cli("serve", "--check-config", *args, env=env, timeout=20)
    served = run_cli("serve", *args, env=env, timeout=20)
    assert checked.returncode == served.returncode == 1
    assert checked.stderr == served.stderr
    assert checked.stderr == "error: --workers needs grpcchat[nats]: pip install 'grpcchat[nats]'\n"


# -- shell completion ----------------------------------------------------------------------


def complete(words: str, *, script: Path = CONSOLE_SCRIPT) -> list[str]:
    """What the program answers bash's completion protocol with for `words` (the last one
    being completed), as the script `--show-completion` prints asks it."""
    env = cli_env(
        COMP_WORDS=words, COMP_CWORD=str(len(words.split()) - 1), _GRPCCHAT_COMPLETE="complete_bash"
    )
    done = subprocess.run(
        [str(script)], capture_output=True, text=True, env=env, timeout=30, stdin=subprocess.DEVNULL
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


@needs_console_script
def test_completion_protocol_through_the_console_script() -> None:
    assert complete("grpcchat se") == ["serve", "send"]
    assert complete("grpcchat h") == ["history", "health"]
    # `send` has a fast path that must leave completion to Typer.
    assert complete("grpcchat send --ti") == ["--timeout"]
    assert complete("grpcchat health --ser") == ["--service"]
    assert "--check-config" in complete("grpcchat serve --ch")


@needs_console_script
@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_the_shown_bash_script_completes_in_bash(tmp_path: Path) -> None:
    env = cli_env(HOME=str(tmp_path), PATH=f"{CONSOLE_SCRIPT.parent}:/usr/bin:/bin")
    script = (
        'eval "$(grpcchat --show-completion)"\n'
        "COMP_WORDS=(grpcchat se); COMP_CWORD=1; _grpcchat_completion grpcchat\n"
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    done = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", script],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    assert (done.returncode, done.stdout) == (0, "serve\nsend\n"), done.stderr


@needs_console_script
@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_install_completion_writes_the_script_into_home(tmp_path: Path) -> None:
    env = cli_env(HOME=str(tmp_path), PATH=f"{CONSOLE_SCRIPT.parent}:/usr/bin:/bin")
    # Typer names the shell by grpcchat's parent process. `bash -c CMD` with a lone command
    # execs it in bash's place, and the parent would be whatever ran the tests (under `sh`,
    # "Shell sh is not supported"): a second command keeps bash there as the parent.
    done = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", "grpcchat --install-completion; exit $?"],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert "bash completion installed" in done.stdout
    installed = (tmp_path / ".bash_completions" / "grpcchat.sh").read_text()
    assert "_GRPCCHAT_COMPLETE=complete_bash" in installed
    assert "grpcchat.sh" in (tmp_path / ".bashrc").read_text()
