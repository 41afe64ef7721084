"""`grpcchat bench`: options into a `BenchConfig`, run the load, print the report."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Annotated

import typer

from grpcchat.cli.consoles import console, err_console
from grpcchat.cli.exits import EXIT_FAILURE, fail, run
from grpcchat.cli.options import Json


def bench(
    addr: Annotated[
        str | None,
        typer.Option(
            "--addr",
            "-a",
            help="Server to load (default: start one in its own process, history in memory).",
        ),
    ] = None,
    subscribers: Annotated[int, typer.Option("--subscribers", "-s", min=1)] = 50,
    publishers: Annotated[int, typer.Option("--publishers", "-p", min=1)] = 1,
    rate: Annotated[
        float, typer.Option(min=0, help="Messages/s per publisher; 0 = as fast as possible.")
    ] = 200.0,
    duration: Annotated[float, typer.Option("--duration", "-d", min=0.1, help="Seconds.")] = 10.0,
    size: Annotated[int, typer.Option(min=1, help="Message length in characters.")] = 64,
    processes: Annotated[
        int | None, typer.Option(min=1, help="Subscriber processes (default: one per CPU).")
    ] = None,
    room: Annotated[str, typer.Option(help="Room to use (its messages are real).")] = "bench",
    as_json: Json = False,
) -> None:
    """Measure fan-out: deliveries per second and end-to-end latency percentiles.

    Subscribers run in separate processes so the load generator is not what is measured.
    Exits 1 if any message was lost or duplicated.
    """
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from grpcchat.bench import PHASES, BenchConfig, run_bench
    from grpcchat.cli.bench_report import render_result

    try:
        config = BenchConfig(
            addr=addr,
            subscribers=subscribers,
            publishers=publishers,
            rate=rate,
            duration=duration,
            room=room,
            processes=processes,
            message_size=size,
        )
    except ValueError as error:
        fail(str(error))
    columns = (TextColumn("{task.description:<8}"), BarColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err_console, transient=True, disable=as_json) as progress:
        tasks = {phase: progress.add_task(phase, total=1.0, visible=False) for phase in PHASES}

        def on_progress(phase: str, done: float) -> None:
            progress.update(tasks[phase], completed=done, visible=True)

        result = run(run_bench(config, on_progress))
    if as_json:
        print(json.dumps(asdict(result), default=str))
    else:
        console.print(render_result(result))
    if not result.ok:
        raise typer.Exit(EXIT_FAILURE)
