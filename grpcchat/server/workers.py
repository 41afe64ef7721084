"""`grpcchat serve --workers N`: N server processes on one port and one history.

The supervisor (this module; it serves nothing itself):

- holds the port: a socket bound with SO_REUSEPORT and never listening (Linux hands
  connections only to listening sockets), so port 0 becomes one real port for every worker and
  a port taken by anything else fails here, with the error a single server gives;
- finds the broker: --broker (or a nats:// --store), else a local nats-server (`localnats`),
  stopped after the workers;
- runs each worker as `python -m grpcchat serve` with the user's options (`WorkerCommand`) and
  `--workers 1 --port P --reuse-port`, the broker, and `--metrics-port M+i` for worker i when
  metrics are on. A worker is up once it prints its startup line (read from its stdout, never
  echoed); its stderr passes through line by line, held back until it is up so that a worker
  that cannot start is reported in one line: the supervisor then stops everything and fails;
- SIGINT or SIGTERM: SIGTERM to every worker (each drains), killed after the grace period plus
  STOP_MARGIN; a second signal kills them at once. A worker that exits on its own is logged
  and restarted with a growing delay; past RESTARTS_MAX restarts in RESTART_WINDOW seconds the
  supervisor gives up, as it does when the local nats-server exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import field
from pathlib import Path
from typing import Any

from grpcchat.core.errors import ChatError
from grpcchat.core.records import record
from grpcchat.core.urls import redacted_url
from grpcchat.server import children
from grpcchat.server.config import ServerConfig, default_data_dir, host_port
from grpcchat.server.localnats import LocalNats

log = logging.getLogger("grpcchat.workers")

START_TIMEOUT = 30.0  # for a worker to open the store and listen
STOP_MARGIN = 5.0  # past the grace period, before a draining worker is killed
OUTPUT_TIMEOUT = 2.0  # for an exited worker's last stderr lines
RESTART_DELAY = 0.5  # before the first restart, doubling up to RESTART_DELAY_MAX
RESTART_DELAY_MAX = 10.0
RESTARTS_MAX = 5
RESTART_WINDOW = 60.0
_STARTUP_LINE = "listening on "
_HELD_LINES = 200


class WorkerError(ChatError):
    """A worker could not start, or workers keep exiting: the supervisor stopped them all."""


@record
class WorkerCommand:
    """How the user ran `grpcchat serve`, for the workers to run the same: options without a
    GRPCCHAT_* variable as arguments, the others as variables (a secret given as a flag then
    does not show in every worker's command line)."""

    args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)


@record
class Started:
    """What the supervisor's startup line tells, once every worker listens."""

    address: str
    # The config as the workers run it: the real port, the broker.
    config: ServerConfig
    pids: tuple[int, ...]


def hold_port(host: str, port: int) -> socket.socket:
    """A socket bound to `host:port` with SO_REUSEPORT, never listening (see the module);
    OSError with the usual message when the address is in use or invalid."""
    address = host_port(host, port)
    in_use = OSError(f"cannot listen on {address}: the address is in use or invalid")
    try:
        family, kind, proto, _, sockaddr = socket.getaddrinfo(
            host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        held = socket.socket(family, kind, proto)
    except OSError:
        raise in_use from None
    try:
        held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        # A server stopped a moment ago leaves connections in TIME_WAIT on the port, which
        # refuse a bind for a minute without SO_REUSEADDR (gRPC's listeners set it). Cleared
        # once bound: set, it would let another program's SO_REUSEADDR socket bind and listen
        # on the port held (this one never listens), while no worker does.
        held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        held.bind(sockaddr)
        held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 0)
    except OSError:
        held.close()
        raise in_use from None
    # Another process of this user sharing the port on purpose would not stop the bind: one
    # that answers there makes the port taken all the same.
    if port and _answers(str(sockaddr[0]), port):
        held.close()
        raise in_use
    return held


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


class _Worker:
    """One worker process: its output readers and whether it is up."""

    def __init__(self, index: int, process: asyncio.subprocess.Process) -> None:
        self.index = index
        self.process = process
        self.started_at = time.monotonic()
        self.listening = asyncio.Event()
        self.up = False
        self._held: list[str] = []
        self.output = asyncio.gather(self._read_stdout(), self._pass_stderr())

    async def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        async for line in read_lines(self.process.stdout):
            if _STARTUP_LINE in line.decode(errors="replace"):
                self.listening.set()

    async def _pass_stderr(self) -> None:
        assert self.process.stderr is not None
        async for raw in read_lines(self.process.stderr):
            line = raw.decode(errors="replace")
            if self.up:
                _write_stderr(line)
            elif len(self._held) < _HELD_LINES:
                self._held.append(line)

    def set_up(self) -> None:
        """It listens: pass on what it wrote so far, and from now on everything."""
        self.up = True
        held, self._held = self._held, []
        _write_stderr("".join(held))

    async def reason(self) -> str:
        """Why it could not start: its last line (the others passed on), once it has exited."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self.output), OUTPUT_TIMEOUT)
        lines = [line for line in self._held if line.strip()]
        self._held = []
        if not lines:
            return f"it exited with code {self.process.returncode}"
        _write_stderr("".join(lines[:-1]))
        last = lines[-1].strip()
        with contextlib.suppress(ValueError):  # a JSON line (--log-format json): its message
            record = json.loads(last)
            if isinstance(record, dict) and isinstance(record.get("message"), str):
                return str(record["message"])
        return last.removeprefix("error: ")


async def read_lines(stream: asyncio.StreamReader) -> AsyncIterator[bytes]:
    """The stream's lines until it ends, a line longer than the reader's limit in pieces: a
    worker's output is read to its end, or its pipe fills and its logging stalls (iterating
    the reader stops at such a line with a ValueError)."""
    while True:
        try:
            yield await stream.readuntil(b"\n")
        except asyncio.IncompleteReadError as end:  # the last line, without its newline
            if end.partial:
                yield end.partial
            return
        except asyncio.LimitOverrunError as long_line:
            yield await stream.readexactly(long_line.consumed)


def _write_stderr(text: str) -> None:
    if text:
        sys.stderr.write(text)
        sys.stderr.flush()


class Supervisor:
    """Runs `config.workers` workers until a signal: `await Supervisor(...).run(on_started)`."""

    def __init__(self, config: ServerConfig, command: WorkerCommand) -> None:
        self.config = config
        self.command = command
        self.port = config.port
        self.broker = ""
        self._nats: LocalNats | None = None
        self._workers: list[_Worker] = []
        self._stop = asyncio.Event()
        self._force = asyncio.Event()
        self._failure: ChatError | None = None
        self._restarts: list[float] = []

    async def run(self, on_started: Callable[[Started], None]) -> None:
        """Until SIGINT/SIGTERM (then returns) or a failure (WorkerError, StoreError, OSError)."""
        loop = asyncio.get_running_loop()
        signals = (signal.SIGINT, signal.SIGTERM)
        for sig in signals:
            loop.add_signal_handler(sig, self._on_signal)
        try:
            with hold_port(self.config.host, self.config.port) as held:
                self.port = held.getsockname()[1]
                async with self._broker() as broker:
                    self.broker = broker
                    try:
                        await self._run(on_started)
                    finally:
                        await self._stop_workers()
        finally:
            for sig in signals:
                loop.remove_signal_handler(sig)
        if self._failure is not None:
            raise self._failure

    @contextlib.asynccontextmanager
    async def _broker(self) -> AsyncIterator[str]:
        shared = self.config.broker or self.config.store
        if shared:
            yield shared
            return
        data_dir = Path(self.config.data_dir) if self.config.data_dir else default_data_dir()
        async with LocalNats(data_dir / "nats") as nats:
            self._nats = nats
            log.info(
                "started nats-server at %s for the workers (JetStream in %s)",
                redacted_url(nats.url),
                nats.directory,
                extra={"event": "broker_started", "broker": redacted_url(nats.url)},
            )
            yield nats.url
        log.info("nats-server stopped", extra={"event": "broker_stopped"})

    async def _run(self, on_started: Callable[[Started], None]) -> None:
        self._workers = [await self._spawn(i) for i in range(self.config.workers)]
        tasks = [asyncio.ensure_future(self._started(w)) for w in self._workers]
        starting = asyncio.gather(*tasks)
        stopping = asyncio.ensure_future(self._stop.wait())
        try:
            first: set[asyncio.Future[Any]] = {starting, stopping}
            await asyncio.wait(first, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.wait([starting])
        failed = None if starting.cancelled() else starting.exception()
        if isinstance(failed, asyncio.CancelledError):  # a stop while starting: not a failure
            failed = None
        if failed is not None or self._stop.is_set():
            stopping.cancel()
            if isinstance(failed, ChatError):  # the first worker that could not start
                self._failure = failed
            elif failed is not None:
                raise failed
            return
        started = dataclasses.replace(self.config, port=self.port, broker=self.broker, store="")
        on_started(Started(started.bind_address, started, self.pids))
        log.info(
            "%d workers listening on %s",
            len(self._workers),
            started.bind_address,
            extra={"event": "workers_started", "pids": list(self.pids)},
        )
        keepers = [asyncio.ensure_future(self._keep(i)) for i in range(len(self._workers))]
        watched: set[asyncio.Future[Any]] = {stopping, *keepers}
        if self._nats is not None and self._nats.process is not None:
            watched.add(asyncio.ensure_future(self._nats.process.wait()))
        try:
            await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
            if not self._stop.is_set() and self._nats is not None:  # only it ends unasked
                self._fail(f"the local nats-server exited (its log: {self._nats.log_path})")
        finally:
            for future in watched:
                future.cancel()

    @property
    def pids(self) -> tuple[int, ...]:
        return tuple(w.process.pid for w in self._workers)

    async def _spawn(self, index: int) -> _Worker:
        args = [*self.command.args, "--workers", "1", "--port", str(self.port), "--reuse-port"]
        if self.config.metrics_port:
            args += ["--metrics-port", str(self.config.metrics_port + index)]
        # The broker as a variable: its URL may hold a password.
        env = {**os.environ, **self.command.env, "GRPCCHAT_BROKER": self.broker}
        process = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "grpcchat", "serve", *args),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            **children.spawn_options(),
        )
        return _Worker(index, process)

    async def _started(self, worker: _Worker) -> None:
        """Until its startup line; WorkerError with its reason when it exits first or is too
        slow (then it is killed)."""
        listening = asyncio.ensure_future(worker.listening.wait())
        exited = asyncio.ensure_future(worker.process.wait())
        try:
            await asyncio.wait(
                {listening, exited}, timeout=START_TIMEOUT, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            listening.cancel()
            exited.cancel()
        if worker.listening.is_set():
            worker.set_up()
            return
        if worker.process.returncode is None:
            await children.stop(worker.process, 1.0)
            reason = f"not listening after {START_TIMEOUT:g}s"
        else:
            reason = await worker.reason()
        raise WorkerError(f"worker {worker.index} could not start: {reason}")

    async def _keep(self, index: int) -> None:
        """Restart worker `index` whenever it exits, until stopping or too many restarts."""
        delay = RESTART_DELAY
        while True:
            worker = self._workers[index]
            code = await worker.process.wait()
            if self._stop.is_set():
                return
            if time.monotonic() - worker.started_at >= RESTART_WINDOW:
                delay = RESTART_DELAY  # it had been running well
            now = time.monotonic()
            self._restarts = [t for t in self._restarts if t > now - RESTART_WINDOW] + [now]
            if len(self._restarts) > RESTARTS_MAX:
                self._fail(
                    f"workers keep exiting ({len(self._restarts)} times within "
                    f"{RESTART_WINDOW:g}s; worker {index} last, with code {code}): stopping"
                )
                return
            log.warning(
                "worker %d (pid %d) exited with code %s; restarting it in %.1fs",
                index,
                worker.process.pid,
                code,
                delay,
                extra={"event": "worker_exited", "worker": index, "exit_code": code},
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, RESTART_DELAY_MAX)
            if self._stop.is_set():
                return
            self._workers[index] = worker = await self._spawn(index)
            try:
                await self._started(worker)
            except WorkerError as exc:
                log.warning("%s", exc, extra={"event": "worker_failed", "worker": index})
                continue
            log.info(
                "worker %d restarted (pid %d)",
                index,
                worker.process.pid,
                extra={"event": "worker_restarted", "worker": index},
            )

    def _on_signal(self) -> None:
        if self._stop.is_set():
            log.warning("second signal: stopping now", extra={"event": "forced_stop"})
            self._force.set()
        self._stop.set()

    def _fail(self, message: str) -> None:
        if self._failure is None:
            self._failure = WorkerError(message)
        self._stop.set()

    async def _stop_workers(self) -> None:
        """SIGTERM to each (they drain), kill what is left after the grace period plus
        STOP_MARGIN, or at once on a second signal."""
        self._stop.set()
        running = [w for w in self._workers if w.process.returncode is None]
        if running:
            log.info(
                "stopping the workers (%d running): draining for up to %.1fs (Ctrl-C again "
                "to force)",
                len(running),
                self.config.grace_period,
                extra={"event": "draining", "grace_seconds": self.config.grace_period},
            )
        for worker in running:
            with contextlib.suppress(ProcessLookupError):
                worker.process.terminate()
        exited = asyncio.gather(*(w.process.wait() for w in running))
        forced = asyncio.ensure_future(self._force.wait())
        ends: set[asyncio.Future[Any]] = {exited, forced}
        await asyncio.wait(
            ends,
            timeout=self.config.grace_period + STOP_MARGIN,
            return_when=asyncio.FIRST_COMPLETED,
        )
        forced.cancel()
        for worker in running:
            if worker.process.returncode is None:
                worker.process.kill()
        await exited
        with contextlib.suppress(TimeoutError):
            outputs = asyncio.gather(*(w.output for w in self._workers))
            await asyncio.wait_for(outputs, OUTPUT_TIMEOUT)
        for worker in self._workers:
            if not worker.up and self._failure is None:
                worker.set_up()  # what one stopped while starting wrote (else: said once)
        if running:
            log.info("workers stopped", extra={"event": "workers_stopped"})


def run(
    config: ServerConfig, command: WorkerCommand, on_started: Callable[[Started], None]
) -> None:
    """Supervise `config.workers` workers until SIGINT/SIGTERM (see the module). Raises
    OSError when the port is taken, ChatError (WorkerError, StoreError, ConfigError) when the
    broker or a worker cannot start or workers keep exiting."""
    asyncio.run(Supervisor(config, command).run(on_started))
