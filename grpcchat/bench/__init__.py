"""A built-in load generator: many subscribers and a few publishers against a real server.

    result = await run_bench(BenchConfig(subscribers=50, rate=200, duration=10), on_progress)
    print(result.deliveries_per_second)

Two protocols. native: subscribers follow the room on grpcchat's `Subscribe`; publishers post
on a `Connect` session (`ConnectRequest.send`, up to `max_in_flight` unanswered, each answered
by a `SendAck`) or, when the server does not answer acks (or `publish="unary"`), with up to
`max_in_flight` concurrent unary `Send` calls. v1: everything is the article's `Chat` stream, so
it runs against the article's Go server as well: a subscriber is a Chat stream that only reads,
a publisher one that writes (paced by `rate` if set) with up to `max_in_flight` messages not yet
echoed back to it (the article's server broadcasts to the sender too), reading what comes back
as the Go client does. v1 has only the lobby.

Every message's text carries a marker: run id, publisher, per-publisher seq and the send time
(`time.time_ns()`, the wall clock every process on the machine shares: run the bench on the
server's machine). Subscribers find the markers in the raw response bytes (frames), so loss
and duplicates are counted per subscriber from (publisher, seq) pairs and latency is measured
from the send, against any server, even one that stamps or numbers nothing.

The load does not share a process with what it measures:

- the server runs in its own process: the one at `addr`, or, with `addr=None`,
  `python -m grpcchat serve` with SERVER_FLAGS (a free port, history in memory, no rate limit),
  started here and stopped at the end. `addr` may name several nodes of one chat
  ("a:1,b:2", e.g. `grpcchat serve` processes on one NATS history): subscriber i, never-reading
  session i and publisher j go to address i % n (j % n), every subscriber still expects every
  message wherever it was sent, and the result has each address's share (`BenchResult.nodes`);
- subscribers are spread over `processes` worker processes (spawned: a script calling run_bench
  needs the usual `if __name__ == "__main__":` guard), one event loop each; with the default
  reader ("h2") each subscriber is one call on an HTTP/2 connection of its own read straight off
  the socket (h2), about a microsecond of Python per delivery; reader "grpc" uses gRPC's reads
  (tens of microseconds each: the bench then saturates before a fast server does);
- publishers run in the calling process (a v1 publisher with the h2 reader also speaks HTTP/2
  by hand, for the same reason).

`slow` more sessions open their stream and never read: they are not counted as subscribers
and not checked for loss (grpcchat should cut them off; the article's server stalls), and are
reported apart. Publishing starts only once every subscriber is registered (native: the
server's headers, sent after the join; v1: a ping seen, since the article's server says nothing
before it broadcasts), so every message sent must reach every subscriber: `lost` and
`duplicates` are correctness checks, not noise. A subscriber whose stream ends is not
reconnected: what it misses is lost.

The messages are real: they land in the room of the server at `addr` (and in its history), so
point it at a room nobody uses. Every wait is bounded, and worker processes and a server started
here are stopped on any exit, including an error or Ctrl-C (cancellation).

The names below are the API; the modules behind them are not: config (BenchConfig), result
(what a run measured), run (the phases), server (the spawned server), pool and worker (the
subscriber processes, talking through messages), publish (the publishers), frames (the text's
marker and the hand-encoded protobuf), rpc (raw gRPC calls), h2 (HTTP/2 by hand), latency and
cpu (turning raw measurements into results). The table is drawn by the CLI
(`grpcchat.cli.bench_report`): nothing outside `grpcchat.cli` imports Rich.
"""

from grpcchat.bench.config import BenchConfig, BenchError
from grpcchat.bench.result import BenchResult, CpuUsage, Latency, NodeShare
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
    "NodeShare",
    "ProgressCallback",
    "run_bench",
]
