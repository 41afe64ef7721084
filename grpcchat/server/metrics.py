"""Prometheus metrics on a side port (`grpcchat serve --metrics-port N`): `/metrics` over HTTP.

Nothing is measured here. The hub and the writers only bump plain counters
(`grpcchat.core.stats.HubStats`, `grpcchat.server.counters.ServerStats`), and the gauges are
the hub's state itself; `ChatCollector` turns them into metric families when Prometheus scrapes,
in prometheus_client's HTTP thread, so a scrape costs the event loop nothing and an unscraped
server nothing but those increments. This module is imported only when metrics are on.

Every server has a registry of its own (several servers in one process do not collide), and no
label carries a room, a user name or anything else a client chooses: labels are the stream kind,
the status code and the limit, a handful of values each.

Extension point: an engine with metrics of its own gives the composition root a collector
(`prometheus_client.registry.Collector`: a `collect()` yielding metric families, read from the
HTTP thread), added with `MetricsEndpoint.add`; the engine itself keeps plain numbers, as the
hub does. `EngineCollector` is the first: a history shared by several servers (NATS) reports
whether its room feed is followed and its connection is up.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from threading import Thread
from typing import TypeVar
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.exposition import start_http_server
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from grpcchat.core.hub import Hub
from grpcchat.core.stats import Histogram
from grpcchat.server.config import host_port
from grpcchat.server.counters import ServerStats

# Codes a message is commonly refused with, shown at 0 before the first one, so rates and alerts
# work from the start; any other code appears once it happens.
REFUSAL_CODES = (
    "INVALID_ARGUMENT",
    "RESOURCE_EXHAUSTED",
    "NOT_FOUND",
    "UNAUTHENTICATED",
    "UNAVAILABLE",
)


class EngineCollector:
    """A history shared by several servers: whether this one follows the others' messages (its
    room feed), and whether the engine's connection is up (both 1 or 0)."""

    def __init__(self, feed_up: Callable[[], bool], connected: Callable[[], bool] | None) -> None:
        self._feed_up = feed_up
        self._connected = connected

    def collect(self) -> Iterable[Metric]:
        yield GaugeMetricFamily(
            "grpcchat_room_feed_up",
            "1 while this server follows the room messages other servers append, else 0.",
            value=float(self._feed_up()),
        )
        if self._connected is not None:
            yield GaugeMetricFamily(
                "grpcchat_store_connected",
                "1 while the history engine's connection (NATS) is up, else 0.",
                value=float(self._connected()),
            )


class ChatCollector:
    """The chat server's metrics, read from the hub and the servicer's counters at scrape time."""

    def __init__(self, hub: Hub, stats: ServerStats) -> None:
        self._hub = hub
        self._stats = stats

    def collect(self) -> Iterable[Metric]:
        hub, stats = self._hub, self._stats
        load = hub.load()
        counts = hub.stats

        sessions = GaugeMetricFamily(
            "grpcchat_sessions", "Session streams open, by kind.", labels=["kind"]
        )
        for kind, value in _copy(stats.sessions):
            sessions.add_metric([kind], value)
        yield sessions
        yield GaugeMetricFamily("grpcchat_rooms", "Rooms with members.", value=load.rooms)
        yield GaugeMetricFamily(
            "grpcchat_room_members",
            "Room memberships: sessions in rooms, summed over rooms.",
            value=load.memberships,
        )
        yield GaugeMetricFamily(
            "grpcchat_queued_events",
            "Live events waiting in session queues, all sessions together.",
            value=load.queued,
        )
        yield GaugeMetricFamily(
            "grpcchat_queued_events_max",
            "Live events waiting in the fullest session queue.",
            value=load.max_queued,
        )
        yield GaugeMetricFamily(
            "grpcchat_lagging_sessions",
            "Sessions whose queue is more than half full.",
            value=load.lagging,
        )
        yield GaugeMetricFamily(
            "grpcchat_draining",
            "1 while the server drains (shutting down), else 0.",
            value=1 if hub.draining else 0,
        )

        yield CounterMetricFamily(
            "grpcchat_messages_accepted",
            "Messages accepted (room and direct, replies included; a retried key is not counted "
            "again).",
            value=counts.accepted,
        )
        relations = CounterMetricFamily(
            "grpcchat_relations",
            "Edits, deletes and reactions accepted, by kind (not counted as messages accepted).",
            labels=["kind"],
        )
        for relation, value in sorted(_copy(counts.relations)):
            relations.add_metric([relation], value)
        yield relations
        refused = CounterMetricFamily(
            "grpcchat_messages_refused",
            "Messages refused, by gRPC status code.",
            labels=["code"],
        )
        by_code = dict.fromkeys(REFUSAL_CODES, 0)
        by_code.update(_copy(stats.refused))
        for code, value in sorted(by_code.items()):
            refused.add_metric([code], value)
        yield refused
        yield CounterMetricFamily(
            "grpcchat_events_delivered",
            "Events written to session streams (messages, notices, acks), counted per batch.",
            value=stats.delivered,
        )
        yield _histogram(
            "grpcchat_fanout_latency_seconds",
            "From a room message's acceptance (another node's: its arrival here) to its write to "
            "a stream, once per written batch (its oldest live message).",
            stats.fan_out,
        )
        yield CounterMetricFamily(
            "grpcchat_slow_consumers",
            "Sessions cut off as slow consumers (RESOURCE_EXHAUSTED; their clients resume).",
            value=counts.slow_consumers,
        )
        yield CounterMetricFamily(
            "grpcchat_resumes", "Joins that resumed from a position.", value=counts.resumes
        )
        yield CounterMetricFamily(
            "grpcchat_history_gaps",
            "History gaps reported to clients (messages that could not be replayed).",
            value=counts.gaps,
        )
        yield _histogram(
            "grpcchat_store_append_seconds",
            "Time the history store took to append a room message.",
            counts.store_append,
        )
        limited = CounterMetricFamily(
            "grpcchat_rate_limited",
            "Refusals over a per-user rate: messages, or requests (joins, reads).",
            labels=["limit"],
        )
        limited.add_metric(["message"], counts.rate_limited_messages)
        limited.add_metric(["request"], counts.rate_limited_requests)
        yield limited


_K = TypeVar("_K", bound=str)


def _copy(counts: Mapping[_K, int]) -> list[tuple[_K, int]]:
    """The items of a dict the event loop may add to meanwhile."""
    while True:
        try:
            return list(counts.items())
        except RuntimeError:  # "dictionary changed size during iteration": read it again
            continue


def _histogram(name: str, documentation: str, histogram: Histogram) -> HistogramMetricFamily:
    counts, total = histogram.snapshot()
    buckets: list[tuple[str, float]] = []
    cumulative = 0
    for bound, count in zip((*histogram.bounds, float("inf")), counts, strict=True):
        cumulative += count
        buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
    return HistogramMetricFamily(name, documentation, buckets=buckets, sum_value=total)


class MetricsEndpoint:
    """A server's own registry (its chat metrics, and the process's CPU, memory and file
    descriptors), served at http://host:port/metrics from a daemon thread."""

    def __init__(self, *collectors: Collector) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        for collector in collectors:
            self.add(collector)
        self._http: tuple[WSGIServer, Thread] | None = None

    def add(self, collector: Collector) -> None:
        """Serve `collector`'s metrics too (an engine's, for example)."""
        self.registry.register(collector)

    @property
    def port(self) -> int:
        """The port it listens on (0 until started)."""
        return self._http[0].server_port if self._http is not None else 0

    def start(self, host: str, port: int) -> None:
        """Listen on `host:port`; OSError with a clear message if that cannot be done."""
        try:
            self._http = start_http_server(port, addr=host.strip("[]"), registry=self.registry)
        except OSError as error:
            reason = error.strerror or str(error)
            raise OSError(
                f"cannot serve metrics on {host_port(host, port)}: {reason} "
                "(pick another --metrics-port, or 0 to turn metrics off)"
            ) from error

    def stop(self) -> None:
        """Stop listening and wait for the HTTP thread (blocks up to half a second: call it off
        the event loop)."""
        if self._http is None:
            return
        (http, thread), self._http = self._http, None
        http.shutdown()
        http.server_close()
        thread.join()
