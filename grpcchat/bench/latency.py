"""Latency histograms: each worker encodes its own, the calling process merges them into Latency.

An HdrHistogram keeps 3 significant digits over the whole range in a small fixed-size encoding,
so a worker's latencies cross the process boundary as a few kilobytes whatever the message count.
"""

from __future__ import annotations

from typing import Any

from hdrh.histogram import HdrHistogram  # type: ignore[import-untyped]

from grpcchat.bench.result import Latency

# Latencies are recorded in microseconds, from 1 µs to 10 minutes, to 3 significant digits.
_LOWEST_US = 1
_HIGHEST_US = 600_000_000
_SIGNIFICANT_DIGITS = 3


def _histogram() -> Any:  # hdrh has no type hints
    return HdrHistogram(_LOWEST_US, _HIGHEST_US, _SIGNIFICANT_DIGITS)


def encode(counts: dict[int, int]) -> bytes:
    """`counts` (latency in whole microseconds -> how many) as one encoded histogram. Values
    outside the range are clamped into it: a skewed clock must not lose a delivery's count."""
    histogram = _histogram()
    for micros, count in counts.items():
        histogram.record_value(min(max(micros, _LOWEST_US), _HIGHEST_US), count)
    return bytes(histogram.encode())


def merge(encoded: list[bytes]) -> Latency | None:
    """The percentiles over every worker's histogram; None when nothing was recorded."""
    total = _histogram()
    for data in encoded:
        total.add(HdrHistogram.decode(data))
    if int(total.get_total_count()) == 0:
        return None

    def ms(micros: Any) -> float:
        return int(micros) / 1000.0

    return Latency(
        p50=ms(total.get_value_at_percentile(50.0)),
        p90=ms(total.get_value_at_percentile(90.0)),
        p99=ms(total.get_value_at_percentile(99.0)),
        max=ms(total.get_max_value()),
    )
