"""A BenchResult as a Rich table, for the terminal (`grpcchat bench` without --json), and the
standard scenarios side by side (`nox -s bench`: `python -m grpcchat.cli.bench_report FILE`)."""

from __future__ import annotations

import contextlib
import json
import platform
import sys
from typing import Any

from rich.table import Table
from rich.text import Text

from grpcchat.bench.config import available_cpus
from grpcchat.bench.result import BenchResult


def render_result(result: BenchResult) -> Table:
    """The result as a Rich table: metric, value, note."""
    config = result.config
    rate = "max rate" if config.rate == 0 else f"{config.rate:g} msg/s each"
    slow = f" + {config.slow} never reading" if config.slow else ""
    table = Table(
        title=(
            f"{config.protocol}: {config.subscribers} subscribers{slow} x {config.publishers} "
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

    nodes = result.nodes
    if len(nodes) > 1:
        table.add_row("servers", f"{len(nodes)} nodes", "one chat, load spread round-robin")
        for number, node in enumerate(nodes, 1):
            publishers = f"{node.publishers} publisher{'s' if node.publishers != 1 else ''}"
            table.add_row(
                f"node {number}",
                node.addr,
                Text(
                    f"{node.subscribers} subscribers: {node.delivered:,} delivered, "
                    f"{node.lost:,} lost; {publishers}: {node.accepted:,} accepted",
                    style="bold red" if node.lost else "",
                ),
            )
    else:
        table.add_row("server", result.addr, "started for this run" if config.addr is None else "")
    window = f", {config.max_in_flight} in flight" if result.publish_mode != "v1 stream" else ""
    table.add_row("publishing", result.publish_mode, f"{config.reader} readers{window}")
    sent_note = f"{result.sent_per_second:,.0f} msg/s over {result.publish_elapsed:.1f}s"
    target = config.rate * config.publishers
    behind = bool(target) and result.sent_per_second < 0.95 * target
    if behind:
        sent_note += f", short of the {target:,.0f} asked: sends answered slowly or rate-limited"
    table.add_row("sent", f"{result.sent:,}", Text(sent_note, style="yellow" if behind else ""))
    if result.send_errors:
        table.add_row("send errors", flag(result.send_errors, "bold red"), "failed or unanswered")
    if result.send_retries:
        table.add_row("send retries", f"{result.send_retries:,}", "pushback: RESOURCE_EXHAUSTED")
    table.add_row("delivered", f"{result.delivered:,}", f"of {result.expected:,} expected")
    table.add_row(
        "lost", flag(result.lost, "bold red"), f"not delivered within {config.drain_timeout:g}s"
    )
    table.add_row("duplicates", flag(result.duplicates, "bold red"), "")
    if result.unconfirmed:
        table.add_row("unconfirmed", f"{result.unconfirmed:,}", "failed sends that arrived")
    table.add_row("disconnects", flag(result.disconnects, "yellow"), "subscriber streams ended")
    if config.slow:
        table.add_row(
            "slow",
            f"{config.slow:,}",
            f"never reading (not counted): {result.slow_connected} registered, "
            f"{result.slow_cut_off} cut off by the server",
        )
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
            ("p50", latency.p50, "send time (in the text) to subscriber"),
            ("p90", latency.p90, ""),
            ("p99", latency.p99, ""),
            ("max", latency.max, ""),
        )
        for label, millis, note in percentiles:
            table.add_row(f"latency {label}", f"{millis:,.2f} ms", note)
    cpu = result.cpu
    workers = config.worker_processes
    cpu_rows: tuple[tuple[str, float | None, str], ...] = (
        ("CPU server", cpu.server, _server_cpu_note(result)),
        ("CPU subscribers", cpu.workers, f"{workers} process{'es' if workers != 1 else ''}"),
        ("CPU publishers", cpu.publishers, f"this process; {available_cpus()} cores in all"),
    )
    for label, share, note in cpu_rows:
        table.add_row(label, "-" if share is None else f"{share:.0f}%", note)
    return table


def _server_cpu_note(result: BenchResult) -> str:
    """What the server's CPU figure is: one process, or the sum of each node's (named by its
    address when there is one pid per address, else by its pid)."""
    cpu = result.cpu
    if len(cpu.servers) <= 1:
        return "% of one core" if cpu.server is not None else "not measured"
    pids = result.config.server_pids
    addrs = result.addrs
    labels = addrs if len(addrs) == len(pids) else tuple(f"pid {pid}" for pid in pids)
    shares = ", ".join(
        f"{label} {'-' if share is None else f'{share:.0f}%'}"
        for label, share in zip(labels, cpu.servers, strict=True)
    )
    total = "sum" if cpu.server is not None else "not all measured"
    return f"{total} of {len(pids)} processes: {shares}"


# -- `nox -s bench`: the standard scenarios side by side ------------------------------------------

COLUMNS = (("go", "Go seed (v1)"), ("native", "grpcchat native"), ("v1", "grpcchat v1"))


def machine() -> str:
    """This machine in one line: CPU model, cores, OS, Python."""
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as info:
        for line in info:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return (
        f"{model}, {available_cpus()} cores available, {platform.system()} "
        f"{platform.release()}, Python {platform.python_version()}"
    )


def _cell(run: dict[str, Any] | None, base: dict[str, Any] | None) -> str:
    """One run as "deliveries/s, p99 (ratio to the Go seed)", plus what went wrong."""
    if run is None:
        return "-"
    if "error" in run:
        return f"failed: {run['error']}"
    dps = float(run["deliveries_per_s"])
    latency = run.get("latency_ms") or {}
    text = f"{dps:,.0f}/s, p99 {latency['p99']:,.0f} ms" if latency else f"{dps:,.0f}/s"
    if base is not None and "error" not in base and float(base["deliveries_per_s"]) > 0:
        text += f" ({dps / float(base['deliveries_per_s']):.2f}x)"
    notes = []
    if run.get("lost"):
        notes.append(f"lost {run['lost']:,}")
    if run.get("duplicates"):
        notes.append(f"dup {run['duplicates']:,}")
    if run.get("slow"):
        notes.append(f"slow {run['slow']}: cut off {run.get('slow_cut_off', 0)}")
    return text + (f"; {', '.join(notes)}" if notes else "")


def comparison_rows(scenarios: list[dict[str, Any]]) -> list[list[str]]:
    """Each scenario's row: its name, then one cell per column of COLUMNS."""
    rows = []
    for scenario in scenarios:
        runs = scenario["runs"]
        base = runs.get("go")
        rows.append([scenario["name"], *(_cell(runs.get(key), base) for key, _ in COLUMNS)])
    return rows


def default_config_line(report: dict[str, Any]) -> str | None:
    """The default configuration (SQLite history, a log line a message) against the memory
    store with `--quiet` (the native run of the same scenario), or None if it was not run."""
    measured = report.get("default_config")
    if measured is None:
        return None
    name = measured["scenario"]
    base = next((s["runs"].get("native") for s in report["scenarios"] if s["name"] == name), None)
    run = measured["run"]
    line = f"Default configuration, {name}, native: {_cell(run, None)}"
    if "error" in run or base is None or "error" in base or float(base["deliveries_per_s"]) <= 0:
        return line
    ratio = float(run["deliveries_per_s"]) / float(base["deliveries_per_s"])
    return line + (
        f", {ratio:.2f}x the memory store with --quiet "
        f"({float(base['deliveries_per_s']):,.0f}/s; target 0.80x)"
    )


def render_comparison(report: dict[str, Any]) -> Table:
    table = Table(title=f"grpcchat bench, standard scenarios — {report['machine']}")
    table.add_column("scenario", style="bold")
    for _, title in COLUMNS:
        table.add_column(title)
    for row in comparison_rows(report["scenarios"]):
        table.add_row(*row)
    return table


def comparison_markdown(report: dict[str, Any]) -> str:
    """The same table as Markdown, for the README."""
    lines = [
        "| scenario | " + " | ".join(title for _, title in COLUMNS) + " |",
        "|---" * (len(COLUMNS) + 1) + "|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in comparison_rows(report["scenarios"])]
    if default := default_config_line(report):
        lines += ["", default + "."]
    return "\n".join([*lines, "", f"Measured on: {report['machine']}."])


def main(argv: list[str]) -> int:
    """`python -m grpcchat.cli.bench_report RESULTS.json`: print the comparison (nox -s bench)."""
    from grpcchat.cli.consoles import console

    with open(argv[0], encoding="utf-8") as file:
        report = json.load(file)
    report.setdefault("machine", machine())
    console.print(render_comparison(report))
    if default := default_config_line(report):
        console.print(default, markup=False, highlight=False)
    console.print(comparison_markdown(report), markup=False, highlight=False, soft_wrap=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
