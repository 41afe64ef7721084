"""Registering the chat service on a grpc.aio server: requests parsed by `parsing` (one that does
not parse is refused as bad input), unary responses through the generated message types,
streams' responses as raw bytes (the servicer encodes each event once, see `framing`)."""

from __future__ import annotations

from typing import Any

import grpc
from grpc import aio

from grpcchat.gen.chat.v1 import chat_service_pb2 as pb
from grpcchat.server.parsing import parser
from grpcchat.server.servicer import ChatServicer

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["ChatService"].full_name


def add_to_server(servicer: ChatServicer, server: aio.Server) -> None:
    """Register the service; streams get raw-bytes responses (encoded by us, once)."""

    def unary(
        handler: Any, request_type: Any, response_type: Any
    ) -> grpc.RpcMethodHandler[Any, Any]:
        return grpc.unary_unary_rpc_method_handler(
            handler,
            request_deserializer=parser(request_type),
            response_serializer=response_type.SerializeToString,
        )

    handlers = {
        "Chat": grpc.stream_stream_rpc_method_handler(
            servicer.Chat, request_deserializer=parser(pb.ChatMessage)
        ),
        "Connect": grpc.stream_stream_rpc_method_handler(
            servicer.Connect, request_deserializer=parser(pb.ConnectRequest)
        ),
        "Subscribe": grpc.unary_stream_rpc_method_handler(
            servicer.Subscribe, request_deserializer=parser(pb.SubscribeRequest)
        ),
        "Send": unary(servicer.Send, pb.SendRequest, pb.SendResponse),
        "History": unary(servicer.History, pb.HistoryRequest, pb.HistoryResponse),
        "ListRooms": unary(servicer.ListRooms, pb.ListRoomsRequest, pb.ListRoomsResponse),
        "ListMembers": unary(servicer.ListMembers, pb.ListMembersRequest, pb.ListMembersResponse),
        "MarkRead": unary(servicer.MarkRead, pb.MarkReadRequest, pb.MarkReadResponse),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
