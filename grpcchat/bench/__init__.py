"""A built-in load generator: many subscribers and a few publishers against a real server.

    result = await run_bench(BenchConfig(subscribers=50, rate=200, duration=10), on_progress)
    print(result.deliveries_per_second)

The load does not share a process with what it measures:

- the server runs in its own process: the one at `addr`, or, with `addr=None`,
  `python -m grpcchat serve` with SERVER_FLAGS (a free port, history in memory, no rate limit),
  started here and stopped at the end;
- subscribers are spread over `processes` worker processes (spawned: a script calling run_bench
  needs the usual `if __name__ == "__main__":` guard), one event loop each, each subscriber a
  `ChatClient(...).session(name, room).events()` exactly as `grpcchat join` uses it;
- publishers run in the calling process and post with `ChatClient.send`, paced to `rate`.

Publishing starts only once every subscriber is connected (in the room), so every message sent
must reach every subscriber: `lost` and `duplicates` are correctness checks, not noise. Latency
is end to end: from the server's timestamp on the message (taken when it accepted it) to the
moment the subscriber's `events()` yields it. That needs one clock: run the benchmark on the
server's machine (a server elsewhere adds the clocks' difference to every latency).

The messages are real: they land in `room` of the server at `addr` (and in its history), so
point it at a room nobody uses. Every wait is bounded, and worker processes and a server started
here are stopped on any exit, including an error or Ctrl-C (cancellation).

The names below are the API; the modules behind them are not:
config (BenchConfig), result (what a run measured), run (the phases), server (the spawned
server), pool and worker (the subscriber processes, talking through messages), publish (the
publishers), latency and cpu (turning raw measurements into results). The table is drawn by the CLI
(`grpcchat.cli.bench_report`): nothing outside `grpcchat.cli` imports Rich.
"""

from grpcchat.bench.config import BenchConfig, BenchError
from grpcchat.bench.result import BenchResult, CpuUsage, Latency
from grpcchat.bench.run import (
    PHASE_CONNECT,
    PHASE_DRAIN,
    PHASE_PUBLISH,
    PHASE_SERVER,
    PHASES,
    ProgressCallback,
    run_bench,
)
from grpcchat.bench.server import SERVER_FLAGS

__all__ = [
    "PHASES",
    "PHASE_CONNECT",
    "PHASE_DRAIN",
    "PHASE_PUBLISH",
    "PHASE_SERVER",
    "SERVER_FLAGS",
    "BenchConfig",
    "BenchError",
    "BenchResult",
    "CpuUsage",
    "Latency",
    "ProgressCallback",
    "run_bench",
]
