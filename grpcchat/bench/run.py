"""run_bench: one run, phase by phase (server, connect, publish, drain), every wait bounded and
every process it started stopped on any exit."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Callable

from grpcchat.bench import cpu, latency
from grpcchat.bench.config import STOP_GRACE, BenchConfig, BenchError, round_robin
from grpcchat.bench.messages import Finish, WorkerSpec
from grpcchat.bench.pool import WorkerPool
from grpcchat.bench.publish import Pinger, publish
from grpcchat.bench.publish_native import answers_acks
from grpcchat.bench.result import BenchResult, NodeShare
from grpcchat.bench.rpc import Raw, check_protocol
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
    # This run's id: its markers (and names) are unique to it, so only its own messages count.
    run = secrets.token_hex(3)
    prefix = f"bench-{run}-"
    v1 = config.protocol == "v1"
    room = config.target_room
    async with contextlib.AsyncExitStack() as stack:
        server: ServerProcess | None = None
        if config.addr is None:
            progress(PHASE_SERVER, 0.0)
            server = ServerProcess((*SERVER_FLAGS, *config.server_args))
            stack.push_async_callback(server.stop)
            await server.start()
            progress(PHASE_SERVER, 1.0)
            addrs: tuple[str, ...] = (server.addr,)
        else:
            addrs = config.addrs
        where = ", ".join(addrs)

        def check_server() -> None:
            if server is not None:
                server.check()

        # Subscribers see no gRPC statuses (they read raw HTTP/2): an unreachable server or one
        # without the protocol is told here, in the server's words (each node's, in turn).
        for n, addr in enumerate(addrs):
            name = f"{prefix}check{n or ''}"
            await check_protocol(addr, config.protocol, name, room, config.connect_timeout)
        # Several nodes: subscriber i (and never-reading session i) follows the room at
        # addrs[i % n]; every one of them still expects every message, wherever it was sent.
        names = [f"{prefix}s{i}" for i in range(config.subscribers)]
        sub_addrs = round_robin(config.subscribers, addrs)
        slow_names = [f"{prefix}z{i}" for i in range(config.slow)]
        slow_addrs = round_robin(config.slow, addrs)
        count = config.worker_processes
        specs = [
            WorkerSpec(
                index=i,
                protocol=config.protocol,
                room=room,
                names=tuple(names[i::count]),
                addrs=sub_addrs[i::count],
                # The never-reading sessions share the last process (they cost it nothing).
                slow_names=tuple(slow_names) if i == count - 1 else (),
                slow_addrs=slow_addrs if i == count - 1 else (),
                run=run,
                reader=config.reader,
                timeout=config.connect_timeout,
            )
            for i in range(count)
        ]
        pool = WorkerPool(specs)
        stack.push_async_callback(pool.close)
        pool.start()
        everyone = config.subscribers + config.slow

        spawned = server.pid if server is not None else None
        server_pids = (spawned,) if spawned is not None else config.server_pids

        def cpu_now() -> cpu.CpuSnapshot:
            return cpu.snapshot(server_pids, pool.pids)

        def connecting() -> None:
            check_server()
            progress(PHASE_CONNECT, pool.connected / everyone)

        progress(PHASE_CONNECT, 0.0)
        pingers: list[Pinger] = []
        if v1:
            # The article's server sends nothing before a broadcast: pings tell subscribers
            # they are registered (on each node, for its own subscribers).
            for n, addr in enumerate(addrs):
                pinger = Pinger(addr, run, f"{prefix}ping{n or ''}")
                stack.push_async_callback(pinger.aclose)
                pinger.start()
                pingers.append(pinger)
        await pool.wait(
            lambda: pool.connected >= everyone,
            config.connect_timeout,
            connecting,
            lambda: BenchError(
                f"only {pool.connected} of {everyone} subscribers connected to "
                f"{where} within {config.connect_timeout:g}s"
            ),
        )
        if pingers:
            for pinger in pingers:
                await pinger.aclose()
            # Pings still on their way are ignored by subscribers; let them land first.
            await asyncio.sleep(0.2)
        progress(PHASE_CONNECT, 1.0)

        if v1:
            mode = "v1 stream"
        elif config.publish != "auto":
            mode = config.publish
        else:
            # Stream only if every node answers acks.
            acks = True
            for n, addr in enumerate(addrs):
                raw = Raw(addr, config.send_timeout)
                try:
                    name = f"{prefix}probe{n or ''}"
                    acks = await answers_acks(raw, name, room, config.send_timeout)
                finally:
                    await raw.aclose()
                if not acks:
                    break
            mode = "stream" if acks else "unary"

        cpu_before = cpu_now()
        progress(PHASE_PUBLISH, 0.0)

        def publishing(done: float) -> None:
            check_server()
            pool.poll()  # a subscriber process that fails ends the run now
            progress(PHASE_PUBLISH, done)

        publishers = [f"{prefix}p{i}" for i in range(config.publishers)]
        tally = await publish(config, addrs, run, publishers, mode, publishing, stack)
        started = tally.started
        publish_elapsed = tally.elapsed
        progress(PHASE_PUBLISH, 1.0)
        if tally.sent == 0 and tally.first_error is not None:
            raise tally.first_error

        finish = Finish(tuple(tally.issued), frozenset(tally.failed), config.drain_timeout)
        expected = finish.expected * config.subscribers
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

        pool.finish(finish)
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
    pub_addrs = round_robin(config.publishers, addrs)
    nodes = []
    for addr in addrs:
        mine = [j for j, at in enumerate(pub_addrs) if at == addr]
        failed = sum(1 for j, _ in finish.failed if pub_addrs[j] == addr)
        shares = [r.by_addr.get(addr, (0, 0, 0)) for r in reports]
        nodes.append(
            NodeShare(
                addr=addr,
                subscribers=sum(s[0] for s in shares),
                publishers=len(mine),
                accepted=sum(finish.issued[j] for j in mine) - failed,
                delivered=sum(s[1] for s in shares),
                lost=sum(s[2] for s in shares),
            )
        )
    last_delivery = max((r.last_delivery for r in reports), default=0.0)
    # From the first send to the last delivery, and never shorter than the publishing: a server
    # that stalls early is measured over the whole time it was given.
    elapsed = max(last_delivery - started if delivered else 0.0, publish_elapsed, 1e-9)
    return BenchResult(
        config=config,
        addr=",".join(addrs),
        publish_mode=mode,
        sent=tally.sent,
        send_errors=tally.errors,
        send_retries=tally.retries,
        expected=sum(r.expected for r in reports),
        delivered=delivered,
        lost=sum(r.lost for r in reports),
        duplicates=sum(r.duplicates for r in reports),
        unconfirmed=sum(r.unconfirmed for r in reports),
        disconnects=sum(r.disconnects for r in reports),
        slow_connected=sum(r.slow_connected for r in reports),
        slow_cut_off=sum(r.slow_cut_off for r in reports),
        publish_elapsed=publish_elapsed,
        elapsed=elapsed,
        sent_per_second=tally.sent / max(publish_elapsed, 1e-9),
        deliveries_per_second=delivered / elapsed,
        latency=latency.merge([r.histogram for r in reports]),
        cpu=cpu.usage(cpu_before, cpu_after, window),
        nodes=tuple(nodes),
    )
