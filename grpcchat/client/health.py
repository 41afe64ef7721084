"""One health check: ask a server's standard gRPC health service (`grpc.health.v1.Health`) how
it is, once, for scripts and container probes (`grpcchat health`)."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from grpcchat.client.channel import Connection
from grpcchat.client.config import ClientConfig
from grpcchat.core.errors import RemoteError

SERVING = "SERVING"


async def check_health(config: ClientConfig, service: str = "") -> str:
    """The status the server reports for `service` ("" is the whole server, or a service's
    full name such as `chat.v1.ChatService`): `SERVING`, or `NOT_SERVING` (a draining server
    says so), or another status name of the health protocol.

    One call, not waiting for the server to come up, bounded by the config's timeout. Raises
    RemoteError when there is no answer: unreachable, timed out, a service the server does not
    know (`NOT_FOUND`), a server without the health service (`UNIMPLEMENTED`).
    """
    connection = Connection(config)
    try:
        stub = health_pb2_grpc.HealthStub(connection.channel)
        try:
            response = await stub.Check(
                health_pb2.HealthCheckRequest(service=service),
                timeout=config.timeout,
                metadata=connection.metadata,
            )
        except grpc.RpcError as error:
            raise _explained(connection.error(error), config.addr, service) from None
        name: str = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
        return name
    finally:
        await connection.aclose()


def _explained(error: RemoteError, addr: str, service: str) -> RemoteError:
    if error.status == "NOT_FOUND":
        return RemoteError(error.status, f"the server at {addr} knows no service {service!r}")
    if error.status == "UNIMPLEMENTED":
        return RemoteError(error.status, f"the server at {addr} has no gRPC health service")
    return error
