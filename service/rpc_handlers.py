"""AuthService's method handlers, built like the generated ones but lenient about undecodable bytes.

grpc's generated `add_AuthServiceServicer_to_server` deserializes with
`Message.FromString`, which raises on bytes that are not the request message;
grpc then answers UNKNOWN with no ErrorInfo, names the Python exception class
to the caller, and logs a traceback per request. Here each deserializer returns
an `Undecodable` marker instead, which the servicer's `_rpc` turns into
BAD_REQUEST like any other malformed request, and the cause is logged at most
once per interval per method (`runtime.ratelimited_log`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf import message, message_factory

from runtime.ratelimited_log import DEFAULT_INTERVAL, RateLimitedLog
from wxlogin.v1 import auth_pb2, auth_pb2_grpc

log = logging.getLogger(__name__)

_SERVICE = auth_pb2.DESCRIPTOR.services_by_name["AuthService"]


class Undecodable:
    """Stands in for a request whose bytes are not the method's request message."""

    __slots__ = ("message_type",)

    def __init__(self, message_type: str) -> None:
        self.message_type = message_type  # the proto's full name, e.g. wxlogin.v1.LoginRequest


def _lenient(
    method: str, request_type: type[message.Message], quiet: RateLimitedLog
) -> Callable[[bytes], message.Message | Undecodable]:
    """FromString that returns a marker instead of raising; one marker per method, reused."""
    name = request_type.DESCRIPTOR.full_name
    marker = Undecodable(name)

    def deserialize(data: bytes) -> message.Message | Undecodable:
        try:
            return request_type.FromString(data)
        except Exception as error:  # whatever the parser raises, the bytes are bad
            # The type's name only: the bytes (which may hold a token) are never logged.
            quiet.log(
                logging.WARNING,
                f"{method}: {type(error).__name__}",
                "%s: request bytes are not a %s (%s); answered BAD_REQUEST",
                method,
                name,
                type(error).__name__,
            )
            return marker

    return deserialize


def add_auth_service(
    servicer: auth_pb2_grpc.AuthServiceServicer,
    server: grpc.aio.Server,
    *,
    log_interval: float = DEFAULT_INTERVAL,
) -> None:
    """Register every AuthService RPC of `servicer` on `server` (what the generated helper does)."""
    quiet = RateLimitedLog(log, log_interval)
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    for name, method in _SERVICE.methods_by_name.items():
        if method.client_streaming or method.server_streaming:
            raise TypeError(f"{name}: only unary RPCs are handled here")
        request_type = message_factory.GetMessageClass(method.input_type)
        response_type = message_factory.GetMessageClass(method.output_type)
        handlers[name] = grpc.unary_unary_rpc_method_handler(
            getattr(servicer, name),
            request_deserializer=_lenient(name, request_type, quiet),
            response_serializer=response_type.SerializeToString,
        )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(_SERVICE.full_name, handlers),)
    )
    server.add_registered_method_handlers(_SERVICE.full_name, handlers)
