"""The subscriber processes, as seen from the calling process: start, follow, collect, stop.

Workers are spawned (not forked: the caller's event loop and gRPC state must not be copied), so
a script calling run_bench needs the usual `if __name__ == "__main__":` guard.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import queue
import time
from collections.abc import Callable
from multiprocessing.connection import wait as wait_for_any
from multiprocessing.context import SpawnProcess
from multiprocessing.queues import Queue

from grpcchat.bench.config import STOP_GRACE, BenchError
from grpcchat.bench.messages import (
    POLL,
    Command,
    Finish,
    Progress,
    Report,
    Stop,
    WorkerResult,
    WorkerSpec,
)
from grpcchat.bench.worker import worker_main
from grpcchat.core.errors import RemoteError


class WorkerPool:
    """The subscriber processes, their latest progress and their results."""

    def __init__(self, specs: list[WorkerSpec]) -> None:
        context = multiprocessing.get_context("spawn")
        self._reports: Queue[Report] = context.Queue()
        self._commands: list[Queue[Command]] = [context.Queue() for _ in specs]
        self._processes: list[SpawnProcess] = [
            context.Process(
                target=worker_main,
                args=(spec, commands, self._reports),
                name=f"grpcchat-bench-{spec.index}",
                daemon=True,
            )
            for spec, commands in zip(specs, self._commands, strict=True)
        ]
        self._connected = [0] * len(specs)
        self._delivered = [0] * len(specs)
        self._results: dict[int, WorkerResult] = {}

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._processes if p.pid is not None]

    @property
    def connected(self) -> int:
        return sum(self._connected)

    @property
    def delivered(self) -> int:
        return sum(self._delivered)

    @property
    def finished(self) -> bool:
        return len(self._results) == len(self._processes)

    @property
    def results(self) -> list[WorkerResult]:
        return [self._results[i] for i in sorted(self._results)]

    def start(self) -> None:
        for process in self._processes:
            process.start()

    def finish(self, finish: Finish) -> None:
        for commands in self._commands:
            commands.put(finish)

    def poll(self) -> None:
        """Take in every report waiting; raise if a worker failed or died."""
        # Which workers had exited is noted before reading: one that reported its result and then
        # exited has that result in the queue, and is not taken for dead.
        exited = [p.exitcode is not None for p in self._processes]
        while True:
            try:
                report = self._reports.get_nowait()
            except queue.Empty:
                break
            if isinstance(report, Progress):
                self._connected[report.worker] = report.connected
                self._delivered[report.worker] = report.delivered
            elif isinstance(report, WorkerResult):
                self._results[report.worker] = report
                self._delivered[report.worker] = report.delivered
            else:
                if report.status is not None:
                    raise RemoteError(report.status, report.message)
                raise BenchError(report.message)
        for index, gone in enumerate(exited):
            if gone and index not in self._results:
                code = self._processes[index].exitcode
                raise BenchError(f"subscriber process {index} exited unexpectedly (code {code})")

    async def wait(
        self,
        done: Callable[[], bool],
        seconds: float,
        tick: Callable[[], None],
        on_timeout: Callable[[], BenchError],
    ) -> None:
        """Keep taking in reports until `done()`; raise `on_timeout()` after `seconds`."""
        deadline = time.monotonic() + seconds
        while True:
            self.poll()
            tick()
            if done():
                return
            if time.monotonic() >= deadline:
                raise on_timeout()
            await asyncio.sleep(POLL)

    async def close(self) -> None:
        """Stop every worker: ask, then terminate, then kill. Bounded."""
        for commands in self._commands:
            with contextlib.suppress(Exception):
                commands.put_nowait(Stop())
        await self._join(STOP_GRACE)
        for process in self._processes:
            if process.is_alive():
                process.terminate()
        await self._join(1.0)
        for process in self._processes:
            if process.is_alive():
                process.kill()
        await self._join(1.0)
        # The queues' feeder threads must not hold up this process's exit on a dead reader.
        for commands in self._commands:
            commands.close()
            commands.cancel_join_thread()
        self._reports.close()
        self._reports.cancel_join_thread()

    async def _join(self, seconds: float) -> None:
        """Wait (in a thread, bounded) until every started worker has exited."""
        deadline = time.monotonic() + seconds
        while True:
            alive = [p for p in self._processes if p.pid is not None and p.is_alive()]
            left = deadline - time.monotonic()
            if not alive or left <= 0:
                return
            await asyncio.to_thread(wait_for_any, [p.sentinel for p in alive], left)
