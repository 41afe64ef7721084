"""run_bench: one run, phase by phase (server, connect, publish, drain), every wait bounded and
every process it started stopped on any exit."""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Callable

from grpcchat.bench import cpu, latency
from grpcchat.bench.config import STOP_GRACE, BenchConfig, BenchError
from grpcchat.bench.messages import WorkerSpec
from grpcchat.bench.pool import WorkerPool
from grpcchat.bench.publish import publish
from grpcchat.bench.result import BenchResult
from grpcchat.bench.server import SERVER_FLAGS, ServerProcess

# Progress phases, in order. `done` goes from 0.0 to 1.0 within each.
PHASE_SERVER = "server"  # starting the server process (only when addr is None)
PHASE_CONNECT = "connect"  # subscribers connecting: fraction connected
PHASE_PUBLISH = "publish"  # publishing: fraction of the duration elapsed
PHASE_DRAIN = "drain"  # waiting for in-flight deliveries: fraction delivered
PHASES = (PHASE_SERVER, PHASE_CONNECT, PHASE_PUBLISH, PHASE_DRAIN)

ProgressCallback = Callable[[str, float], None]


async def run_bench(
    config: BenchConfig, on_progress: ProgressCallback | None = None
) -> BenchResult:
    """Run one benchmark and return its result.

    `on_progress(phase, done)` is called from the event loop as each phase of PHASES advances.
    Raises BenchError when the run cannot be carried out and RemoteError when the server refuses
    it (e.g. unreachable: status "UNAVAILABLE").
    """
    progress: ProgressCallback = on_progress or (lambda _phase, _done: None)
    # Names unique to this run: subscribers count only this run's publishers' messages.
    prefix = f"bench-{secrets.token_hex(3)}-"
    senders = f"{prefix}p"
    async with contextlib.AsyncExitStack() as stack:
        server: ServerProcess | None = None
        if config.addr is None:
            progress(PHASE_SERVER, 0.0)
            server = ServerProcess((*SERVER_FLAGS, *config.server_args))
            stack.push_async_callback(server.stop)
            await server.start()
            progress(PHASE_SERVER, 1.0)
            addr = server.addr
        else:
            addr = config.addr

        def check_server() -> None:
            if server is not None:
                server.check()

        names = [f"{prefix}s{i}" for i in range(config.subscribers)]
        count = config.worker_processes
        specs = [
            WorkerSpec(
                index=i,
                addr=addr,
                room=config.room,
                names=tuple(names[i::count]),
                sender_prefix=senders,
                timeout=config.connect_timeout,
            )
            for i in range(count)
        ]
        pool = WorkerPool(specs)
        stack.push_async_callback(pool.close)
        pool.start()

        def cpu_now() -> cpu.CpuSnapshot:
            return cpu.snapshot(server.pid if server is not None else None, pool.pids)

        def connecting() -> None:
            check_server()
            progress(PHASE_CONNECT, pool.connected / config.subscribers)

        progress(PHASE_CONNECT, 0.0)
        await pool.wait(
            lambda: pool.connected >= config.subscribers,
            config.connect_timeout,
            connecting,
            lambda: BenchError(
                f"only {pool.connected} of {config.subscribers} subscribers connected to "
                f"{addr} within {config.connect_timeout:g}s"
            ),
        )
        progress(PHASE_CONNECT, 1.0)

        cpu_before = cpu_now()
        progress(PHASE_PUBLISH, 0.0)
        started = time.time()

        def publishing(done: float) -> None:
            check_server()
            pool.poll()  # a subscriber process that fails ends the run now
            progress(PHASE_PUBLISH, done)

        tally = await publish(config, addr, senders, publishing)
        publish_elapsed = time.time() - started
        progress(PHASE_PUBLISH, 1.0)
        if tally.sent == 0 and tally.first_error is not None:
            raise tally.first_error

        expected = tally.sent * config.subscribers
        # CPU is counted up to the last delivery (seen here within a report interval), not over
        # the idle end of a drain that waits for lost messages.
        cpu_after: cpu.CpuSnapshot | None = None
        window = 0.0

        def draining() -> None:
            nonlocal cpu_after, window
            check_server()
            progress(PHASE_DRAIN, min(1.0, pool.delivered / expected) if expected else 1.0)
            if cpu_after is None and (pool.delivered >= expected or pool.finished):
                cpu_after = cpu_now()
                window = time.time() - started

        pool.finish(tally.sent, config.drain_timeout)
        progress(PHASE_DRAIN, 0.0)
        await pool.wait(
            lambda: pool.finished,
            config.drain_timeout + STOP_GRACE + 2.0,
            draining,
            lambda: BenchError("the subscriber processes did not report their results in time"),
        )
        progress(PHASE_DRAIN, 1.0)
        assert cpu_after is not None  # taken once the pool finished at the latest

    reports = pool.results
    delivered = sum(r.delivered for r in reports)
    last_delivery = max((r.last_delivery for r in reports), default=0.0)
    elapsed = last_delivery - started if delivered else publish_elapsed
    elapsed = max(elapsed, 1e-9)
    return BenchResult(
        config=config,
        addr=addr,
        sent=tally.sent,
        send_errors=tally.errors,
        expected=expected,
        delivered=delivered,
        lost=max(0, expected - delivered),
        duplicates=sum(r.duplicates for r in reports),
        disconnects=sum(r.disconnects for r in reports),
        publish_elapsed=publish_elapsed,
        elapsed=elapsed,
        sent_per_second=tally.sent / max(publish_elapsed, 1e-9),
        deliveries_per_second=delivered / elapsed,
        latency=latency.merge([r.histogram for r in reports]),
        cpu=cpu.usage(cpu_before, cpu_after, window),
    )
