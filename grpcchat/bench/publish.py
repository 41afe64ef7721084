"""The publishers, in the calling process: one loop per publisher, paced to the rate (or not), and
a pluggable way to put a message on the wire.

- `ChatStream` (protocol v1): one `Chat` stream per publisher, as the article's Go client uses it.
  A stream has no answers, but the article's server broadcasts to the sender too: up to `window`
  messages written and not yet back on the publisher's own stream (see publish_v1.Echoes). It
  reads everything the server sends back (a stream that never reads would stall the article's
  server, or be cut off by grpcchat), looking only for its own markers.
  A message counts as sent once its write completed.
- `SessionStream` (native, `--publish stream`): one `Connect` session per publisher posting with
  `ConnectRequest.send`; up to `window` messages written and not yet answered by their `SendAck`.
- `Unary` (native, `--publish unary`): up to `window` concurrent unary `Send` calls.

Native sends are counted once the server accepted them. A send refused with RESOURCE_EXHAUSTED
and a retry-after (pushback) is sent again after that delay with the same key, its text (and so
its send time) unchanged. A send that fails, or is still unanswered at the end, is reported as
failed: its (publisher, seq) is not expected by anyone (if it arrives anyway it is "unconfirmed").
Each message's text is stamped with the time it is handed to gRPC (after waiting for a window
slot), so a server that pushes back through flow control shows it as latency.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence

from grpcchat.bench import frames
from grpcchat.bench.config import STOP_GRACE, BenchConfig, round_robin
from grpcchat.bench.publish_native import SessionStream, Unary
from grpcchat.bench.publish_v1 import ChatStream, H2ChatStream
from grpcchat.bench.publishers import Publisher, Publishing, Stopped, discard, half_close
from grpcchat.bench.rpc import Raw
from grpcchat.core.errors import RemoteError

# A publisher still blocked (flow control, a full window) this long after the end of the
# duration stops: the message it was trying to send is counted as failed.
_LATE = 1.0


async def publish(
    config: BenchConfig,
    addrs: Sequence[str],
    run: str,
    names: list[str],
    mode: str,
    tick: Callable[[float], None],
    stack: contextlib.AsyncExitStack,
) -> Publishing:
    """Run every publisher (publisher i is `names[i]`, at `addrs[i % len(addrs)]`: several nodes
    share the load round-robin) for `config.duration` seconds with `mode`
    ("v1 stream", "stream" or "unary"); returns what they sent. `tick(done)` gets the fraction of
    the duration elapsed every tenth of a second, and may raise to abort.

    The publishers' calls stay open until `stack` closes (after the drain): a v1 stream is
    half-closed at the end of the duration and goes on reading, so the server can post what it
    has not read yet (a cancelled call would throw it away)."""
    loop = asyncio.get_running_loop()
    tally = Publishing(mode=mode, issued=[0] * config.publishers)
    interval = 1.0 / config.rate if config.rate else 0.0
    # One channel per address: gRPC puts every publisher's streams or calls to it on one
    # connection.
    raws = {addr: Raw(addr, config.send_timeout) for addr in dict.fromkeys(addrs)}
    for raw in raws.values():
        stack.push_async_callback(raw.aclose)
    where = round_robin(config.publishers, addrs)
    kinds: dict[str, type[ChatStream | H2ChatStream | SessionStream | Unary]] = {
        "v1 stream": H2ChatStream if config.reader == "h2" else ChatStream,
        "stream": SessionStream,
        "unary": Unary,
    }

    def make(index: int) -> Publisher:
        return kinds[mode](raws[where[index]], config, run, index, names[index], tally)

    publishers = [make(index) for index in range(config.publishers)]

    async def close_all() -> None:
        await asyncio.gather(*(p.aclose() for p in publishers), return_exceptions=True)

    stack.push_async_callback(close_all)
    for publisher in publishers:
        await publisher.open()
    start = loop.time()
    tally.started = time.time()
    deadline = start + config.duration

    async def drive(index: int, publisher: Publisher) -> None:
        # Spread the publishers' ticks over one interval instead of sending in bursts.
        first = start + interval * index / config.publishers
        seq = 0
        try:
            # One deadline for the whole loop, not a wait_for per message: that would make
            # each submit a task and a turn of the loop, so the sends a freed window lets out
            # would go one request each instead of packed, as a client's do.
            async with asyncio.timeout_at(deadline + _LATE):
                while True:
                    if interval:
                        due = first + seq * interval
                        if due >= deadline:
                            break
                        delay = due - loop.time()
                        if delay > 0:
                            await asyncio.sleep(delay)
                    if loop.time() >= deadline:
                        break
                    tally.issued[index] = seq + 1
                    await publisher.submit(seq)
                    seq += 1
        except Stopped:
            return
        except TimeoutError:
            # Blocked past the end: the message may or may not have gone out.
            stuck = RemoteError("DEADLINE_EXCEEDED", "send blocked past the end")
            tally.fail(index, seq, stuck)
            return
        await publisher.settle(config.send_timeout)

    tasks = [asyncio.create_task(drive(i, p)) for i, p in enumerate(publishers)]
    try:
        while not all(task.done() for task in tasks):
            tick(min(1.0, (loop.time() - start) / config.duration))
            await asyncio.wait(tasks, timeout=0.1)
        tally.elapsed = loop.time() - start
        for task in tasks:
            task.result()  # a publisher's unexpected failure
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks, timeout=STOP_GRACE)
    return tally


class Pinger:
    """While subscribers connect (v1 only): a `Chat` stream writing a ping every `every`
    seconds, so subscribers of a server that sends no headers can tell they are registered."""

    def __init__(self, addr: str, run: str, name: str, every: float = 0.1) -> None:
        self._raw = Raw(addr, 10.0)
        self._run = run
        self._name = name
        self._every = every
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._ping())

    async def _ping(self) -> None:
        call = self._raw.chat()
        reader = asyncio.create_task(discard(call))
        try:
            while not call.done():
                with contextlib.suppress(Exception):
                    ping = frames.ping_text(self._run, frames.MIN_MESSAGE_SIZE)
                    await call.write(frames.chat_message(self._name, ping))
                await asyncio.sleep(self._every)
        finally:
            reader.cancel()
            await half_close(call)

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task], timeout=STOP_GRACE)
        await self._raw.aclose()
