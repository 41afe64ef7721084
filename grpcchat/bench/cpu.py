"""CPU accounting: each process's CPU time at both ends of the measured window, as CpuUsage.

Other processes' CPU time is read from /proc, so it is measured on Linux only (None elsewhere);
the calling process's own comes from `time.process_time()`, everywhere.
"""

from __future__ import annotations

import os
import time

from grpcchat.bench.result import CpuUsage
from grpcchat.core.records import record


@record
class CpuSnapshot:
    """CPU seconds used so far: by each server process, by all workers together, by this
    process."""

    servers: tuple[float | None, ...]
    workers: float | None
    publishers: float


def _process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process, from /proc (Linux); None elsewhere."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    # After the command name: state is field 3, utime 14 and stime 15 (1-based, see proc(5)).
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _total(parts: list[float | None] | tuple[float | None, ...]) -> float | None:
    """The sum, None unless there is something to sum and every part could be read."""
    return None if not parts or None in parts else sum(p or 0.0 for p in parts)


def snapshot(server_pids: tuple[int, ...], worker_pids: list[int]) -> CpuSnapshot:
    """CPU seconds now. The workers' total is None unless every one of them could be read."""
    workers = [_process_cpu_seconds(pid) for pid in worker_pids]
    return CpuSnapshot(
        servers=tuple(_process_cpu_seconds(pid) for pid in server_pids),
        workers=_total(workers),
        publishers=time.process_time(),
    )


def usage(before: CpuSnapshot, after: CpuSnapshot, wall: float) -> CpuUsage:
    """CPU used between two snapshots `wall` seconds apart, in percent of one core."""

    def percent(start: float | None, end: float | None) -> float | None:
        if start is None or end is None or wall <= 0:
            return None
        return 100.0 * (end - start) / wall

    servers = tuple(
        percent(start, end) for start, end in zip(before.servers, after.servers, strict=True)
    )
    return CpuUsage(
        server=_total(servers),
        workers=percent(before.workers, after.workers),
        publishers=percent(before.publishers, after.publishers) or 0.0,
        servers=servers,
    )
