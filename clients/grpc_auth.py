"""grpc.aio server interceptor for backends: authenticate `authorization: Bearer` metadata.

server = grpc.aio.server(interceptors=[BearerAuthInterceptor(client)])

async def SomeRpc(self, request, context):
    user = current_user()  # the clients.User behind the caller's token
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Any, TypeVar

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from clients._bearer import bearer_token
from clients._errors import DOMAIN, CallerError, InternalError, SessionInvalid, WxLoginError
from clients._models import User
from clients.client import WxLoginClient

log = logging.getLogger(__name__)

Req = TypeVar("Req")
Resp = TypeVar("Resp")

# Module level because contextvars must be: the interceptor sets it in the
# task that runs the RPC, and the handler reads it there. It holds nothing
# outside an authenticated RPC.
_CURRENT_USER: ContextVar[User | None] = ContextVar("wxlogin_current_user", default=None)

# Infrastructure every load balancer and grpcurl must reach without a token.
_PUBLIC_SERVICES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


def current_user() -> User:
    """The authenticated caller of the RPC being handled; LookupError outside one."""
    user = _CURRENT_USER.get()
    if user is None:
        raise LookupError("no authenticated wxlogin user: is BearerAuthInterceptor installed?")
    return user


def _infrastructure_is_public(method: str) -> bool:
    return method.startswith(_PUBLIC_SERVICES)


class BearerAuthInterceptor(grpc.aio.ServerInterceptor):
    """Checks the caller's token with wxlogin before any handler runs.

    Session failures end the RPC with UNAUTHENTICATED and the wxlogin
    ErrorInfo (SESSION_INVALID, SESSION_EXPIRED); wxlogin being unreachable
    ends it with UNAVAILABLE. `public(method)` methods (default: health and
    reflection) pass through unauthenticated.
    """

    def __init__(
        self,
        client: WxLoginClient,
        *,
        public: Callable[[str], bool] = _infrastructure_is_public,
    ) -> None:
        self._client = client
        self._public = public

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Req, Resp] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Req, Resp] | None:
        handler = await continuation(handler_call_details)
        if handler is None or self._public(handler_call_details.method):
            return handler
        metadata = dict(handler_call_details.invocation_metadata or ())
        authorization = metadata.get("authorization")
        token = bearer_token(authorization if isinstance(authorization, str) else None)
        if token is None:
            return _rejecting(
                handler, SessionInvalid("send metadata authorization: Bearer <token>")
            )
        request_id = metadata.get("x-request-id")
        try:
            session = await self._client.check_session(
                token, request_id=request_id if isinstance(request_id, str) else None
            )
        except CallerError as error:
            # wxlogin refused this backend, not the user: passing CALLER_* on would
            # tell our own callers to log in again. Ours to fix; the log says why.
            log.error("wxlogin refused this backend's caller credentials: %s", error.reason)
            return _rejecting(handler, InternalError("this service cannot check sessions now"))
        except WxLoginError as error:
            return _rejecting(handler, error)
        # grpc.aio runs the interceptor and the handler in the RPC's own task,
        # so the handler sees this value and no other RPC does.
        _CURRENT_USER.set(session.user)
        return handler


def to_status(error: WxLoginError) -> grpc.Status:
    """The gRPC status with wxlogin's ErrorInfo for an error, to pass it on unchanged."""
    info = error_details_pb2.ErrorInfo(reason=error.reason, domain=DOMAIN, metadata=error.metadata)
    detail = any_pb2.Any()
    detail.Pack(info)
    status = status_pb2.Status(
        code=getattr(code_pb2, error.code.name), message=error.message, details=[detail]
    )
    return rpc_status.to_status(status)  # type: ignore[no-any-return]


def _rejecting(
    handler: grpc.RpcMethodHandler[Req, Resp], error: WxLoginError
) -> grpc.RpcMethodHandler[Req, Resp]:
    """A handler of the same shape as `handler` that ends the RPC with `error`."""
    status = to_status(error)

    async def abort(request: Any, context: grpc.aio.ServicerContext[Req, Resp]) -> Any:
        await context.abort(status.code, status.details, status.trailing_metadata)

    kwargs: dict[str, Any] = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(abort, **kwargs)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(abort, **kwargs)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(abort, **kwargs)
    return grpc.stream_stream_rpc_method_handler(abort, **kwargs)
