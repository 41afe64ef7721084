"""Shared fixtures: a real server on port 0 in this process, and real clients over the wire."""

from __future__ import annotations

import asyncio
import os
import re
import select
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import NamedTuple

import grpc
import pytest

from grpcchat.client import ChatClient
from grpcchat.client.config import ClientConfig
from grpcchat.core.limits import Limits
from grpcchat.server import ChatServer
from grpcchat.server.config import ServerConfig

REPO_ROOT = Path(__file__).resolve().parent.parent

# `nats_url`: a real nats-server for the session, started only by tests that ask for it.
# `browser`, `new_user`, `web_server`: the web page in headless Chromium (tests/webfixture.py).
pytest_plugins = ["tests.natsfixture", "tests.webfixture"]

# Tests skip, with a reason, where this machine lacks a part they need (nats-server, Chromium,
# an extra). In CI (`CI` set) that would pass a run that tested less: such a skip fails it.
IN_CI = bool(os.environ.get("CI"))
_MISSING_PART = re.compile(
    r"not installed|could not import|cannot be imported|no chromium|not found on PATH", re.I
)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if not IN_CI or reporter is None:
        return
    missing = sorted(
        {
            str(report.longrepr[-1] if isinstance(report.longrepr, tuple) else report.longrepr)
            for report in reporter.stats.get("skipped", [])
            if _MISSING_PART.search(str(report.longrepr))
        }
    )
    if missing:
        for reason in missing:
            reporter.write_line(f"CI: tests skipped for a missing part: {reason}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture
def server_config() -> ServerConfig:
    # Rate limits off: tests post quickly; tests of the limit set their own.
    return ServerConfig(
        port=0, store="memory://", limits=Limits(rate=0, request_rate=0), grace_period=1.0
    )


@pytest.fixture
async def server(server_config: ServerConfig) -> AsyncIterator[ChatServer]:
    async with ChatServer(server_config) as running:
        yield running


@pytest.fixture
def addr(server: ChatServer) -> str:
    return f"127.0.0.1:{server.port}"


@pytest.fixture
async def client(addr: str) -> AsyncIterator[ChatClient]:
    async with ChatClient(ClientConfig(addr=addr, timeout=5.0)) as connected:
        yield connected


def grpcchat_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "grpcchat", *args]


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRPCCHAT_")}
    env.update(COLUMNS="200", NO_COLOR="1", PYTHONUNBUFFERED="1", **extra)
    return env


class CliResult(NamedTuple):
    """How one `grpcchat` run ended; unpacks as `code, out, err`."""

    returncode: int
    stdout: str
    stderr: str


def run_cli(
    *args: str,
    stdin: str = "",
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 30,
) -> CliResult:
    """`grpcchat ARGS` as a subprocess, to completion: `stdin` piped in, `env` (default:
    `cli_env()`) as its whole environment."""
    done = subprocess.run(
        grpcchat_command(*args),
        input=stdin,
        cwd=cwd,
        capture_output=True,
        text=True,
        env=cli_env() if env is None else env,
        timeout=timeout,
    )
    return CliResult(done.returncode, done.stdout, done.stderr)


async def start_cli(*args: str, env: dict[str, str] | None = None) -> asyncio.subprocess.Process:
    """`grpcchat ARGS` started as a subprocess with stdin, stdout and stderr piped (default
    environment: `cli_env()`), for a test that talks to it while it runs."""
    return await asyncio.create_subprocess_exec(
        *grpcchat_command(*args),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=cli_env() if env is None else env,
    )


async def run_cli_async(
    *args: str, stdin: str = "", env: dict[str, str] | None = None, timeout: float = 30
) -> CliResult:
    """`run_cli` without blocking the event loop an in-process server runs on."""
    process = await start_cli(*args, env=env)
    try:
        out, err = await asyncio.wait_for(process.communicate(stdin.encode()), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return CliResult(process.returncode, out.decode(), err.decode())


def send_as(addr: str, name: str, text: str) -> None:
    """`grpcchat send` one message as `name`; it must be accepted."""
    done = run_cli("send", "--addr", addr, "--name", name, text, timeout=10)
    assert done.returncode == 0, done.stderr


# How long a `grpcchat serve` subprocess may take to print its startup line.
STARTUP_TIMEOUT = 30.0


class ServerProcess:
    """`grpcchat serve --port 0` as a subprocess, with the port read from its startup line."""

    def __init__(self, *args: str, port: int = 0) -> None:
        # Tests never touch the user's real history: memory unless the test picks a store.
        if not any(a.startswith(("--store", "--data-dir")) for a in args):
            args = (*args, "--store", "memory://")
        self.process = subprocess.Popen(
            grpcchat_command("serve", "--port", str(port), *args),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=cli_env(),
        )
        assert self.process.stdout is not None
        # Bounded here, not by the test's timeout: built in a worker thread (asyncio.to_thread),
        # a blocked readline would outlive pytest-timeout's interrupt.
        ready, _, _ = select.select([self.process.stdout], [], [], STARTUP_TIMEOUT)
        line = self.process.stdout.readline() if ready else ""
        match = re.search(r"listening on \S+:(\d+)", line)
        if match is None:
            self.process.kill()
            raise AssertionError(f"no startup line: {line!r} {self.process.stderr.read()!r}")
        self.port = int(match.group(1))
        self.addr = f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def server_process() -> Iterator[ServerProcess]:
    running = ServerProcess()
    yield running
    running.stop()


class _NeverAnswers(grpc.GenericRpcHandler):
    """Takes every call and never answers, not even with headers (a wedged server)."""

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:  # type: ignore[type-arg]
        async def unary(request: bytes, context: object) -> bytes:
            await asyncio.sleep(3600)
            return b""

        async def stream(requests: object, context: object) -> AsyncIterator[bytes]:
            await asyncio.sleep(3600)
            yield b""

        if details.method.endswith(("/Connect", "/Chat", "/Subscribe")):  # type: ignore[attr-defined]
            return grpc.stream_stream_rpc_method_handler(stream)
        return grpc.unary_unary_rpc_method_handler(unary)


@pytest.fixture
async def wedged_addr() -> AsyncIterator[str]:
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((_NeverAnswers(),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield f"127.0.0.1:{port}"
    await server.stop(0)
