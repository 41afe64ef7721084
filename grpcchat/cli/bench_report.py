"""A BenchResult as a Rich table, for the terminal (`grpcchat bench` without --json)."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text

from grpcchat.bench.config import available_cpus
from grpcchat.bench.result import BenchResult


def render_result(result: BenchResult) -> Table:
    """The result as a Rich table: metric, value, note."""
    config = result.config
    rate = "max rate" if config.rate == 0 else f"{config.rate:g} msg/s each"
    table = Table(
        title=(
            f"{config.subscribers} subscribers x {config.publishers} "
            f"publisher{'s' if config.publishers != 1 else ''}, {rate}, "
            f"{config.duration:g}s, {config.message_size} B messages"
        ),
        show_header=False,
        title_justify="left",
    )
    table.add_column("metric", style="bold")
    table.add_column("value", justify="right")
    table.add_column("note", style="dim")

    def flag(value: int, bad: str) -> Text:
        return Text(f"{value:,}", style=bad if value else "green")

    table.add_row("server", result.addr, "started for this run" if config.addr is None else "")
    sent_note = f"{result.sent_per_second:,.0f} msg/s over {result.publish_elapsed:.1f}s"
    target = config.rate * config.publishers
    behind = bool(target) and result.sent_per_second < 0.95 * target
    if behind:
        sent_note += f", short of the {target:,.0f} asked: sends answered slowly or rate-limited"
    table.add_row("sent", f"{result.sent:,}", Text(sent_note, style="yellow" if behind else ""))
    if result.send_errors:
        table.add_row("send errors", flag(result.send_errors, "bold red"), "")
    table.add_row("delivered", f"{result.delivered:,}", f"of {result.expected:,} expected")
    table.add_row("lost", flag(result.lost, "bold red"), "")
    table.add_row("duplicates", flag(result.duplicates, "bold red"), "")
    table.add_row("disconnects", flag(result.disconnects, "yellow"), "slow consumer or lost stream")
    table.add_row(
        "deliveries/s",
        Text(f"{result.deliveries_per_second:,.0f}", style="bold cyan"),
        f"over {result.elapsed:.2f}s, first send to last delivery",
    )
    latency = result.latency
    if latency is None:
        table.add_row("latency", "-", "nothing delivered")
    else:
        percentiles = (
            ("p50", latency.p50, "server's timestamp to subscriber"),
            ("p90", latency.p90, ""),
            ("p99", latency.p99, ""),
            ("max", latency.max, ""),
        )
        for label, millis, note in percentiles:
            table.add_row(f"latency {label}", f"{millis:,.2f} ms", note)
    cpu = result.cpu
    workers = config.worker_processes
    cpu_rows: tuple[tuple[str, float | None, str], ...] = (
        ("CPU server", cpu.server, "% of one core" if cpu.server is not None else "not measured"),
        ("CPU subscribers", cpu.workers, f"{workers} process{'es' if workers != 1 else ''}"),
        ("CPU publishers", cpu.publishers, f"this process; {available_cpus()} cores in all"),
    )
    for label, share, note in cpu_rows:
        table.add_row(label, "-" if share is None else f"{share:.0f}%", note)
    return table
