"""How long a big room takes to form, and what each member costs the server.

    python tests/load/big_room.py [--members 10000] [--channels 100] [--processes 2]

Starts `grpcchat serve` in its own process (history in memory, no rate limits, no per-address
cap: every client here shares one address), then opens `--members` named Subscribe streams to
one room, spread over `--channels` connections in `--processes` client processes, and reports
the time until every member has its RoomJoined, the server's RSS before and after (from
/proc), and the time for one message to reach everyone. A benchmark, not a test: run it alone.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import re
import subprocess
import sys
import time

import grpc

from grpcchat.gen.chat.v1 import chat_service_pb2 as pb
from grpcchat.gen.chat.v1 import chat_service_pb2_grpc as pb_grpc

ROOM = "big"


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


async def _members(addr: str, names: list[str], channels: int, joined: object, got: object) -> None:
    chans = [
        grpc.aio.insecure_channel(addr, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(channels)
    ]
    stubs = [pb_grpc.ChatServiceStub(c) for c in chans]
    done_joining = 0
    done_marker = 0

    async def member(i: int, name: str) -> None:
        nonlocal done_joining, done_marker
        call = stubs[i % channels].Subscribe(pb.SubscribeRequest(name=name, room=ROOM))
        async for response in call:
            for event in response.events:
                kind = event.WhichOneof("kind")
                if kind == "joined":
                    done_joining += 1
                    if done_joining == len(names):
                        joined.set()  # type: ignore[attr-defined]
                elif kind == "message" and event.message.text == "marker":
                    done_marker += 1
                    if done_marker == len(names):
                        got.set()  # type: ignore[attr-defined]
                        return

    # The server stopping at the end ends every stream: not an error here.
    await asyncio.gather(*(member(i, n) for i, n in enumerate(names)), return_exceptions=True)
    for chan in chans:
        await chan.close()


def _client_process(
    addr: str, names: list[str], channels: int, joined: object, got: object
) -> None:
    asyncio.run(_members(addr, names, channels, joined, got))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", type=int, default=10_000)
    parser.add_argument("--channels", type=int, default=100)
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "grpcchat",
            "serve",
            "--port",
            "0",
            "--store",
            "memory://",
            "--rate",
            "0",
            "--request-rate",
            "0",
            "--max-sessions-per-peer",
            "0",
            "--quiet",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        match = re.search(r"listening on (\S+:\d+)", server.stdout.readline())
        assert match, "no startup line"
        addr = match.group(1)
        time.sleep(0.5)
        before = rss_mib(server.pid)
        names = [f"m{i:05d}" for i in range(args.members)]
        ctx = multiprocessing.get_context("spawn")
        shards = [names[p :: args.processes] for p in range(args.processes)]
        joined = [ctx.Event() for _ in shards]
        got = [ctx.Event() for _ in shards]
        started = time.monotonic()
        workers = [
            ctx.Process(
                target=_client_process,
                args=(addr, shard, max(1, args.channels // args.processes), joined[i], got[i]),
            )
            for i, shard in enumerate(shards)
        ]
        for worker in workers:
            worker.start()
        for event in joined:
            if not event.wait(300):
                raise SystemExit("the room did not form within 300 s")
        formed = time.monotonic() - started
        time.sleep(1.0)
        after = rss_mib(server.pid)

        async def post() -> float:
            async with grpc.aio.insecure_channel(addr) as chan:
                sent = time.monotonic()
                await pb_grpc.ChatServiceStub(chan).Send(
                    pb.SendRequest(sender="bot", room=ROOM, text="marker")
                )
                return sent

        sent = asyncio.run(post())
        for event in got:
            event.wait(120)
        fanned = time.monotonic() - sent
        for worker in workers:
            worker.join(30)
        per_member = (after - before) * 1024 / args.members
        print(
            f"{args.members} members on {args.channels} connections: formed in {formed:.1f}s; "
            f"one message reached all in {fanned * 1000:.0f} ms; server RSS {before:.0f} -> "
            f"{after:.0f} MiB ({per_member:.1f} KiB per member)"
        )
    finally:
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    main()
