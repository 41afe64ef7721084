"""The publishers: in the calling process, each posting with `ChatClient.send` at the rate."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from grpcchat.bench.config import STOP_GRACE, BenchConfig
from grpcchat.client import ChatClient
from grpcchat.client.config import ClientConfig
from grpcchat.core.errors import RemoteError


@dataclass(slots=True)
class Publishing:
    """What the publishers sent, all of them together."""

    sent: int = 0  # sends the server accepted
    errors: int = 0  # sends it refused or that failed
    first_error: RemoteError | None = None


async def publish(
    config: BenchConfig, addr: str, prefix: str, tick: Callable[[float], None]
) -> Publishing:
    """Run every publisher (named `prefix` + its number) for `config.duration` seconds; returns
    what they sent. `tick(done)` gets the fraction of the duration elapsed every tenth of a second,
    and may raise to abort."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    deadline = start + config.duration
    tally = Publishing()
    text = ("grpcchat bench " * (config.message_size // 15 + 1))[: config.message_size]
    interval = 1.0 / config.rate if config.rate else 0.0

    async def publisher(index: int) -> None:
        name = f"{prefix}{index}"
        # Spread the publishers' ticks over one interval instead of sending in bursts.
        first = start + interval * index / config.publishers
        # Sends go out on schedule without waiting for earlier answers (a unary call takes about
        # a millisecond here, longer under load), up to `max_in_flight` unanswered at a time.
        window = asyncio.Semaphore(config.max_in_flight)
        in_flight: set[asyncio.Task[None]] = set()

        async def send_one(client: ChatClient) -> None:
            try:
                await client.send(name, text, config.room)
            except RemoteError as error:
                tally.errors += 1
                if tally.first_error is None:
                    tally.first_error = error
            else:
                tally.sent += 1
            finally:
                window.release()

        async with ChatClient(ClientConfig(addr=addr, timeout=config.send_timeout)) as client:
            try:
                n = 0
                while True:
                    if interval:
                        due = first + n * interval
                        if due >= deadline:
                            break
                        delay = due - loop.time()
                        if delay > 0:
                            await asyncio.sleep(delay)
                    await window.acquire()
                    if loop.time() >= deadline:
                        window.release()
                        break
                    task = asyncio.create_task(send_one(client))
                    in_flight.add(task)
                    task.add_done_callback(in_flight.discard)
                    n += 1
                # Each send is bounded by its own deadline (send_timeout).
                await asyncio.gather(*in_flight)
            finally:
                for task in in_flight:
                    task.cancel()

    tasks = [asyncio.create_task(publisher(index)) for index in range(config.publishers)]
    try:
        while not all(task.done() for task in tasks):
            tick(min(1.0, (loop.time() - start) / config.duration))
            await asyncio.wait(tasks, timeout=0.1)
        for task in tasks:
            task.result()  # a publisher's unexpected failure
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks, timeout=STOP_GRACE)
    return tally
