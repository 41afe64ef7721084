"""What one idle server stream costs in gRPC itself, with none of grpcchat's code.

    python tests/load/grpc_stream_memory.py [--calls 1000] [--channels 10]
        [--option grpc.minimal_stack=1 ...] [--experiments ph2_server]

Starts a bare grpc.aio server (one unary-stream method that answers once, then waits forever)
in its own process, opens `--calls` calls to it over `--channels` connections from two client
processes, waits until every call has its first answer, and reports the server's RSS before
and after. `--option` passes a channel argument to the server, `--experiments` sets
`GRPC_EXPERIMENTS` for the server process only. The floor under `big_room.py`'s per-member
cost; a benchmark, not a test: run it alone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import subprocess
import sys
import time

import grpc
from big_room import rss_mib  # this folder is the script's: on sys.path

_SERVER = """
import asyncio, json, sys
import grpc

async def answer_once_then_wait(request, context):
    yield b"x"
    await asyncio.Event().wait()

async def main():
    # As grpcchat's server: a burst of more than 1,000 new calls is otherwise CANCELLED.
    options = [("grpc.server.max_pending_requests", 10000)]
    options += [tuple(option) for option in json.loads(sys.argv[1])]
    server = grpc.aio.server(options=options)
    method = grpc.unary_stream_rpc_method_handler(answer_once_then_wait)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("probe.Probe", {"Idle": method}),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()

asyncio.run(main())
"""


async def _hold_calls(port: int, calls: int, channels: int, answered: object) -> None:
    # A local subchannel pool each, or the channels would share one connection.
    own_pool = [("grpc.use_local_subchannel_pool", 1)]
    address = f"127.0.0.1:{port}"
    chans = [grpc.aio.insecure_channel(address, options=own_pool) for _ in range(channels)]
    methods = [chan.unary_stream("/probe.Probe/Idle", None, None) for chan in chans]
    idle = [methods[i % channels](b"") for i in range(calls)]
    await asyncio.gather(*(call.read() for call in idle))
    answered.set()  # type: ignore[attr-defined]
    await asyncio.Event().wait()  # held open until the parent kills this process


def _client_process(port: int, calls: int, channels: int, answered: object) -> None:
    asyncio.run(_hold_calls(port, calls, channels, answered))


def _option(text: str) -> tuple[str, int | str]:
    name, _, value = text.partition("=")
    return (name, int(value)) if value.lstrip("-").isdigit() else (name, value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--channels", type=int, default=10)
    parser.add_argument("--option", type=_option, action="append", default=[])
    parser.add_argument("--experiments", default="")
    args = parser.parse_args()
    env = dict(os.environ)
    if args.experiments:
        env["GRPC_EXPERIMENTS"] = args.experiments
    server = subprocess.Popen(
        [sys.executable, "-c", _SERVER, json.dumps(args.option)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    ctx = multiprocessing.get_context("spawn")
    workers = []
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        time.sleep(0.5)
        before = rss_mib(server.pid)
        answered = [ctx.Event() for _ in range(2)]
        for event in answered:
            worker = ctx.Process(
                target=_client_process,
                args=(port, args.calls // 2, max(1, args.channels // 2), event),
            )
            worker.start()
            workers.append(worker)
        for event in answered:
            if not event.wait(300):
                raise SystemExit("the calls were not all answered within 300 s")
        time.sleep(1.0)
        after = rss_mib(server.pid)
        calls = args.calls // 2 * 2
        print(
            f"{calls} idle calls on {args.channels} connections "
            f"(options {args.option or 'none'}, experiments {args.experiments or 'none'}): "
            f"server RSS {before:.1f} -> {after:.1f} MiB "
            f"({(after - before) * 1024 / calls:.2f} KiB per call)"
        )
    finally:
        for worker in workers:
            worker.kill()
        server.kill()
        server.wait(10)


if __name__ == "__main__":
    main()
