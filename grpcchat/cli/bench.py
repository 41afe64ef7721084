"""`grpcchat bench`: options into a `BenchConfig`, run the load, print the report."""

from __future__ import annotations

import json
import signal
from enum import StrEnum
from typing import Annotated

import typer

from grpcchat.cli.consoles import console, err_console
from grpcchat.cli.exits import EXIT_FAILURE, EXIT_USAGE, fail, run
from grpcchat.cli.options import Json


class Protocol(StrEnum):
    native = "native"
    v1 = "v1"


class Reader(StrEnum):
    h2 = "h2"
    grpc = "grpc"


class PublishMode(StrEnum):
    auto = "auto"
    stream = "stream"
    unary = "unary"


def bench(
    addr: Annotated[
        str | None,
        typer.Option(
            "--addr",
            "-a",
            help="Server to load (default: start one in its own process, history in memory); "
            "host:port,host:port loads several nodes of one chat, subscribers and publishers "
            "spread round-robin over them.",
        ),
    ] = None,
    protocol: Annotated[
        Protocol,
        typer.Option(
            help="native: grpcchat's Subscribe and Connect/Send; v1: only the article's Chat "
            "stream (works against the article's Go server; lobby only).",
        ),
    ] = Protocol.native,
    subscribers: Annotated[int, typer.Option("--subscribers", "-s", min=1)] = 50,
    publishers: Annotated[int, typer.Option("--publishers", "-p", min=1, max=999)] = 1,
    rate: Annotated[
        float, typer.Option(min=0, help="Messages/s per publisher; 0 = as fast as possible.")
    ] = 200.0,
    window: Annotated[
        int,
        typer.Option(
            "--window",
            "-w",
            min=1,
            help="Messages in flight per publisher: unacked (native), not echoed back (v1).",
        ),
    ] = 64,
    publish: Annotated[
        PublishMode,
        typer.Option(
            help="Native publishing: stream (Connect + SendAck), unary (Send), or auto "
            "(stream when the server answers acks).",
        ),
    ] = PublishMode.auto,
    slow: Annotated[
        int,
        typer.Option(min=0, help="Extra sessions that never read (not counted; reported apart)."),
    ] = 0,
    reader: Annotated[
        Reader,
        typer.Option(
            help="How subscribers read: h2 (HTTP/2 straight off the socket, a connection each: "
            "~1 µs a delivery) or grpc (gRPC reads: ~30 µs each, the bench saturates first).",
        ),
    ] = Reader.h2,
    duration: Annotated[float, typer.Option("--duration", "-d", min=0.1, help="Seconds.")] = 10.0,
    size: Annotated[
        int, typer.Option(min=48, max=4096, help="Message length in bytes (ASCII).")
    ] = 64,
    processes: Annotated[
        int | None, typer.Option(min=1, help="Subscriber processes (default: one per CPU).")
    ] = None,
    room: Annotated[
        str, typer.Option(help="Room (native; default bench). Its messages are real.")
    ] = "",
    drain: Annotated[
        float, typer.Option(min=0, help="Seconds to wait for deliveries after the last send.")
    ] = 10.0,
    server_pid: Annotated[
        str | None,
        typer.Option(
            help="PID of the server at --addr (same machine): measure its CPU; several nodes: "
            "their PIDs, comma-separated (e.g. 123,456).",
        ),
    ] = None,
    as_json: Json = False,
) -> None:
    """Measure fan-out: deliveries per second and end-to-end latency percentiles.

    Each message carries its publisher, sequence number and send time in its text, so loss,
    duplicates and latency (from the send, wall clock: run it on the server's machine) are
    counted by the subscribers against any server, even one that stamps nothing. Subscribers
    run in separate processes so the load generator is not what is measured. Exits 1 if
    anything was lost or duplicated (the never-reading sessions excepted).
    """
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from grpcchat.bench import PHASES, BenchConfig, run_bench
    from grpcchat.bench.config import parse_pids
    from grpcchat.cli.bench_report import render_result
    from grpcchat.cli.roomarg import room_argument

    try:
        config = BenchConfig(
            addr=addr,
            subscribers=subscribers,
            publishers=publishers,
            rate=rate,
            duration=duration,
            room=room_argument(room),
            protocol=protocol.value,
            publish=publish.value,
            slow=slow,
            reader=reader.value,
            max_in_flight=window,
            processes=processes,
            message_size=size,
            drain_timeout=drain,
            server_pid=None if server_pid is None else parse_pids(server_pid),
        )
    except ValueError as error:  # AddressError (a bad --addr list) included
        fail(str(error), EXIT_USAGE)
    columns = (TextColumn("{task.description:<8}"), BarColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err_console, transient=True, disable=as_json) as progress:
        tasks = {phase: progress.add_task(phase, total=1.0, visible=False) for phase in PHASES}

        def on_progress(phase: str, done: float) -> None:
            progress.update(tasks[phase], completed=done, visible=True)

        # SIGTERM ends it as Ctrl-C does: its server and subscriber processes stopped first.
        signal.signal(signal.SIGTERM, _interrupted)
        result = run(run_bench(config, on_progress))
    if as_json:
        print(json.dumps(result.as_json(), default=str))
    else:
        console.print(render_result(result))
    if not result.ok:
        raise typer.Exit(EXIT_FAILURE)


def _interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
