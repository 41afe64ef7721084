"""The load generator, on a tiny real run: it must count exactly, not be fast."""

from __future__ import annotations

import re
import socket
from typing import Any

import pytest
from rich.console import Console

from grpcchat.bench import (
    PHASE_CONNECT,
    PHASE_DRAIN,
    PHASE_PUBLISH,
    PHASE_SERVER,
    BenchConfig,
    BenchResult,
    run_bench,
)
from grpcchat.cli.bench_report import render_result
from grpcchat.core.errors import RemoteError


def _check_exact(result: BenchResult, subscribers: int) -> None:
    assert result.sent > 0
    assert result.send_errors == 0
    assert result.expected == result.sent * subscribers
    assert result.delivered == result.expected
    assert result.lost == 0
    assert result.duplicates == 0
    assert result.disconnects == 0
    assert result.ok
    latency = result.latency
    assert latency is not None
    assert 0 < latency.p50 <= latency.p90 <= latency.p99 <= latency.max
    assert result.deliveries_per_second > 0


async def test_every_subscriber_gets_every_message_once(addr: str) -> None:
    seen: list[tuple[str, float]] = []
    config = BenchConfig(addr=addr, subscribers=3, publishers=1, rate=50, duration=1.5, processes=1)

    result = await run_bench(config, lambda phase, done: seen.append((phase, done)))

    _check_exact(result, subscribers=3)
    assert result.addr == addr
    # At 50 msg/s for 1.5 s: 75 sends, give or take the last one on a busy machine.
    assert 70 <= result.sent <= 75
    phases = [phase for phase, _ in seen]
    assert PHASE_SERVER not in phases  # a server was given
    firsts = [phases.index(p) for p in (PHASE_CONNECT, PHASE_PUBLISH, PHASE_DRAIN)]
    assert firsts == sorted(firsts)
    assert all(0.0 <= done <= 1.0 for _, done in seen)
    assert seen[-1] == (PHASE_DRAIN, 1.0)

    console = Console(record=True, width=120, color_system=None)
    console.print(render_result(result))
    text = console.export_text()
    assert f"{result.delivered:,}" in text
    assert "p99" in text


async def test_starts_its_own_server_and_stops_it() -> None:
    result = await run_bench(
        BenchConfig(subscribers=2, publishers=2, rate=20, duration=0.5, processes=1)
    )

    _check_exact(result, subscribers=2)
    match = re.fullmatch(r"127\.0\.0\.1:(\d+)", result.addr)
    assert match is not None
    assert result.cpu.server is None or result.cpu.server >= 0
    # The server process is gone: nothing listens on its port any more.
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", int(match.group(1))), timeout=2).close()


async def test_unreachable_server_is_an_error_not_a_hang() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = BenchConfig(
        addr=f"127.0.0.1:{port}", subscribers=1, duration=1, processes=1, connect_timeout=20
    )
    with pytest.raises(RemoteError) as caught:
        await run_bench(config)
    assert caught.value.status == "UNAVAILABLE"


@pytest.mark.parametrize(
    "bad",
    [
        {"subscribers": 0},
        {"publishers": 0},
        {"rate": -1},
        {"rate": float("nan")},
        {"duration": 0},
        {"duration": float("inf")},
        {"room": "Not A Room"},
        {"processes": 0},
        {"subscribers": 2, "processes": 3},
        {"message_size": 0},
        {"message_size": 100_000},
        {"max_in_flight": 0},
        {"connect_timeout": 0},
        {"drain_timeout": -1},
        {"send_timeout": 0},
        {"addr": " "},
        {"addr": "127.0.0.1:4000", "server_args": ("--rate", "0")},
    ],
)
def test_config_refuses_nonsense(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - each case has its own message
        BenchConfig(**bad)


def test_config_defaults_and_worker_count() -> None:
    config = BenchConfig()
    assert config.addr is None
    assert config.subscribers == 50
    assert 1 <= config.worker_processes <= config.subscribers
    assert BenchConfig(subscribers=1).worker_processes == 1
    assert BenchConfig(subscribers=10, processes=3).worker_processes == 3
    assert BenchConfig(rate=0).rate == 0  # as fast as possible
