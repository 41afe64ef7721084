"""The server a benchmark starts for itself: `python -m grpcchat serve` in a process of its own,
so the load generator does not share a process (or a GIL) with what it measures."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sys
from collections import deque

from grpcchat.bench.config import STOP_GRACE, BenchError
from grpcchat.server import children

# How the benchmark starts its own server: loopback, a free port, history in memory (not the
# user's history database), no per-user rate limit (publishers post far faster than a person),
# a short drain.
SERVER_FLAGS = (
    "--host",
    "127.0.0.1",
    "--port",
    "0",
    "--store",
    "memory://",
    "--rate",
    "0",
    "--request-rate",
    "0",
    "--max-sessions-per-peer",
    "0",
    "--grace",
    "1",
    "--quiet",
)

START_TIMEOUT = 30.0  # seconds for the server to print its startup line
# The startup line names the real address: port 0 is resolved by the server, never guessed here.
_LISTENING = re.compile(r"listening on (\S+:\d+)")


class ServerProcess:
    """`python -m grpcchat serve FLAGS`, its address read from its startup line."""

    def __init__(self, flags: tuple[str, ...]) -> None:
        self._flags = flags
        self._process: asyncio.subprocess.Process | None = None
        self._readers: list[asyncio.Task[None]] = []
        self._stderr: deque[str] = deque(maxlen=20)
        self.addr = ""

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    async def start(self) -> None:
        """Start the server and wait (at most START_TIMEOUT) for the address it listens on."""
        # Its flags alone say how it runs: the user's GRPCCHAT_* settings (an auth secret,
        # TLS files, --workers) made it a server the benchmark could not use.
        own = {k: v for k, v in os.environ.items() if not k.startswith("GRPCCHAT_")}
        env = {**own, "COLUMNS": "200", "NO_COLOR": "1", "PYTHONUNBUFFERED": "1"}
        self._process = process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "grpcchat",
            "serve",
            *self._flags,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            # Stopped with the benchmark however it ends: SIGTERM'ed, it left the server up.
            **children.spawn_options(),
        )
        assert process.stdout is not None
        assert process.stderr is not None
        # Keep reading stderr: a full pipe would block the server's logging, and so the server.
        self._readers.append(asyncio.create_task(self._keep(process.stderr, self._stderr)))
        try:
            line = await asyncio.wait_for(process.stdout.readline(), START_TIMEOUT)
        except TimeoutError:
            raise BenchError(f"the server did not start within {START_TIMEOUT:g}s") from None
        match = _LISTENING.search(line.decode(errors="replace"))
        if match is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(process.wait(), 2.0)
            await asyncio.sleep(0.1)  # let the stderr reader catch up
            detail = " ".join(self._stderr) or line.decode(errors="replace").strip()
            raise BenchError(f"the server did not start: {detail or 'no output'}")
        self.addr = match.group(1)
        # Stdout too is read to the end, for the same reason as stderr.
        self._readers.append(asyncio.create_task(self._keep(process.stdout, deque(maxlen=1))))

    def check(self) -> None:
        """Raise BenchError if the server process has exited."""
        if self._process is not None and self._process.returncode is not None:
            detail = " ".join(self._stderr)
            raise BenchError(
                f"the server process exited during the run (code {self._process.returncode})"
                + (f": {detail}" if detail else "")
            )

    @staticmethod
    async def _keep(stream: asyncio.StreamReader, tail: deque[str]) -> None:
        while line := await stream.readline():
            tail.append(line.decode(errors="replace").strip())

    async def stop(self) -> None:
        """SIGTERM (the server drains for at most a second), then SIGKILL. Bounded."""
        process = self._process
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
            try:
                await asyncio.wait_for(process.wait(), STOP_GRACE + 1.0)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(process.wait(), 2.0)
        for reader in self._readers:
            reader.cancel()
