"""One health check: ask a server's standard gRPC health service (`grpc.health.v1.Health`) how
it is, once, for scripts and container probes (`grpcchat health`)."""

from __future__ import annotations

from grpc_health.v1 import health_pb2, health_pb2_grpc

from grpcchat.client.channel import Connection
from grpcchat.client.config import ClientConfig
from grpcchat.core.errors import RemoteError

SERVING = "SERVING"


async def check_health(config: ClientConfig, service: str = "") -> str:
    """The status the server reports for `service` ("" is the whole server, or a service's
    full name such as `chat.v1.ChatService`): `SERVING`, or `NOT_SERVING` (a draining server
    says so), or another status name of the health protocol.

    One call, not waiting for the server to come up, bounded by the config's timeout; with
    several addresses, the first that answers (each is tried once). Raises
    RemoteError when there is no answer: unreachable, timed out, a service the server does not
    know (`NOT_FOUND`), a server without the health service (`UNIMPLEMENTED`).
    """
    connection = Connection(config)
    try:
        response = await connection.unary(
            lambda timeout: health_pb2_grpc.HealthStub(connection.channel).Check(
                health_pb2.HealthCheckRequest(service=service),
                timeout=timeout,
                metadata=connection.metadata,
            ),
            config.timeout,
        )
    except RemoteError as error:
        raise _explained(error, connection.addr, service) from None
    finally:
        await connection.aclose()
    name: str = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    return name


def _explained(error: RemoteError, addr: str, service: str) -> RemoteError:
    if error.status == "NOT_FOUND":
        return RemoteError(error.status, f"the server at {addr} knows no service {service!r}")
    if error.status == "UNIMPLEMENTED":
        return RemoteError(error.status, f"the server at {addr} has no gRPC health service")
    return error
