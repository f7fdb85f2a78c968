"""AuthService's method handlers, built like the generated ones but lenient about undecodable bytes.

grpc's generated `add_AuthServiceServicer_to_server` deserializes with
`Message.FromString`, which raises on bytes that are not the request message;
grpc then answers UNKNOWN with no ErrorInfo, names the Python exception class
to the caller, and logs a traceback per request. Here each deserializer returns
an `Undecodable` marker instead, which the servicer's `_rpc` turns into
BAD_REQUEST like any other malformed request, and logs (rate-limited) inside the
call, so that the line has the call's request id and caller.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf import message, message_factory

from wxlogin.v1 import auth_pb2, auth_pb2_grpc

_SERVICE = auth_pb2.DESCRIPTOR.services_by_name["AuthService"]


class Undecodable:
    """Stands in for a request whose bytes are not the method's request message."""

    __slots__ = ("error_kind", "message_type")

    def __init__(self, message_type: str, error_kind: str) -> None:
        self.message_type = message_type  # the proto's full name, e.g. wxlogin.v1.LoginRequest
        # The parser's exception class only: the bytes (which may hold a token) never go out.
        self.error_kind = error_kind


def _lenient(
    request_type: type[message.Message],
) -> Callable[[bytes], message.Message | Undecodable]:
    """FromString that returns a marker instead of raising."""
    name = request_type.DESCRIPTOR.full_name

    def deserialize(data: bytes) -> message.Message | Undecodable:
        try:
            return request_type.FromString(data)
        except Exception as error:  # whatever the parser raises, the bytes are bad
            return Undecodable(name, type(error).__name__)

    return deserialize


def add_auth_service(
    servicer: auth_pb2_grpc.AuthServiceServicer,
    server: grpc.aio.Server,
) -> None:
    """Register every AuthService RPC of `servicer` on `server` (what the generated helper does)."""
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    for name, method in _SERVICE.methods_by_name.items():
        if method.client_streaming or method.server_streaming:
            raise TypeError(f"{name}: only unary RPCs are handled here")
        request_type = message_factory.GetMessageClass(method.input_type)
        response_type = message_factory.GetMessageClass(method.output_type)
        handlers[name] = grpc.unary_unary_rpc_method_handler(
            getattr(servicer, name),
            request_deserializer=_lenient(request_type),
            response_serializer=response_type.SerializeToString,
        )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(_SERVICE.full_name, handlers),)
    )
    server.add_registered_method_handlers(_SERVICE.full_name, handlers)
