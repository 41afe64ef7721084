"""`grpc.health.v1.Health` for the server: Check and Watch as grpcio-health-checking's aio
servicer answers them (and List, which it leaves unimplemented), except that a drain ends every
Watch once it has said NOT_SERVING. That servicer's Watch never ends, so a drain waited out its
whole grace for any client that watches (gRPC's client-side health checking keeps one Watch open
per channel)."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any

import grpc
from grpc_health.v1 import health_pb2

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
# What a Watch says when a drain ends it: what every stream is told then.
DRAINING = "server is shutting down"


class HealthService:
    """Added to a server with `health_pb2_grpc.add_HealthServicer_to_server`."""

    def __init__(self) -> None:
        self._status: dict[str, int] = {"": SERVING}
        # Each Watch's queue of the statuses set since; None once the server drains.
        self._watchers: defaultdict[str, set[asyncio.Queue[int | None]]] = defaultdict(set)
        self._draining = False

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> health_pb2.HealthCheckResponse:
        status = self._status.get(request.service)
        if status is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        return health_pb2.HealthCheckResponse(status=status)

    async def List(
        self, request: health_pb2.HealthListRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> health_pb2.HealthListResponse:
        """Every service's status (a few: this server's and "")."""
        response = health_pb2.HealthListResponse()
        for service, status in self._status.items():
            response.statuses[service].status = status
        return response

    async def Watch(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        """The service's status now and at each change (an unknown service: SERVICE_UNKNOWN,
        until it is set); ended with UNAVAILABLE, after NOT_SERVING, when the server drains."""
        changes: asyncio.Queue[int | None] = asyncio.Queue()
        watchers = self._watchers[request.service]
        watchers.add(changes)
        try:
            shown = None
            status: int | None = self._status.get(request.service, SERVICE_UNKNOWN)
            while status is not None:
                if status != shown:
                    await context.write(health_pb2.HealthCheckResponse(status=status))
                    shown = status
                if self._draining and changes.empty():
                    break  # started during the drain: it has said NOT_SERVING
                status = await changes.get()
        finally:
            watchers.discard(changes)
            if not watchers:
                del self._watchers[request.service]
        await context.abort(grpc.StatusCode.UNAVAILABLE, DRAINING)

    def set(self, service: str, status: int) -> None:
        """`service`'s status from now on; ignored once the server drains."""
        if not self._draining:
            self._set(service, status)

    def drain(self) -> None:
        """Every service NOT_SERVING for good, and every Watch ended once it has said so."""
        for service in self._status:
            self._set(service, NOT_SERVING)
        self._draining = True
        for watchers in self._watchers.values():
            for changes in watchers:
                changes.put_nowait(None)

    def _set(self, service: str, status: int) -> None:
        self._status[service] = status
        for changes in self._watchers.get(service, ()):
            changes.put_nowait(status)
