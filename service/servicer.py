"""Translates between proto messages and the domain; errors become status in one place."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TypeVar

import grpc
from google.protobuf import struct_pb2, timestamp_pb2

from runtime.ratelimited_log import RateLimitedLog
from service.errors import BadRequest, InternalError, WxLoginError, to_grpc_status
from service.limits import InFlightLimits
from service.records import UserRecord
from service.rpc_handlers import Undecodable
from service.sessions import Sessions
from service.user_data import UserDataDecryptor
from wxlogin.v1 import auth_pb2, auth_pb2_grpc

log = logging.getLogger(__name__)
# Crashes and rejected input can repeat on every request; one line (or one
# traceback) per cause per minute, with the count of the rest, is enough to act on.
_quiet = RateLimitedLog(log)

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Handler = Callable[["AuthServicer", Req, grpc.aio.ServicerContext[Req, Resp]], Awaitable[Resp]]


def _rpc(handler: Handler[Req, Resp]) -> Handler[Req, Resp]:
    """Turn every failure into a status with ErrorInfo; nothing internal leaks."""
    name = handler.__name__

    @functools.wraps(handler)
    async def wrapper(
        self: AuthServicer,
        request: Req | Undecodable,
        context: grpc.aio.ServicerContext[Req, Resp],
    ) -> Resp:
        if isinstance(request, Undecodable):
            # Already logged, rate-limited, where the bytes failed to parse
            # (service/rpc_handlers.py): a line here would be one per request.
            error: WxLoginError = BadRequest(f"the request is not a valid {request.message_type}")
        else:
            try:
                # Past the bound for its kind of work, a call is refused at once
                # (OVERLOADED) instead of queueing behind a stalled dependency.
                with self._limits.slot(name):
                    return await handler(self, request, context)
            except WxLoginError as known:
                error = known
                log.info("%s failed: %s", name, error.reason)
            except (ValueError, TypeError) as malformed:
                # e.g. a Struct that can't hold the decrypted JSON; never a traceback,
                # and never the exception's text (it may quote the input).
                kind = type(malformed).__name__
                _quiet.log(logging.WARNING, f"{name}: {kind}", "%s rejected input: %s", name, kind)
                error = BadRequest("request could not be processed")
            except asyncio.CancelledError:
                raise  # the caller went away or the deadline passed
            except Exception as crash:
                cause = f"{name} crashed: {type(crash).__name__}"
                _quiet.log(logging.ERROR, cause, "%s crashed", name, exc_info=True)
                error = InternalError()
        status = to_grpc_status(error)
        await context.abort(status.code, status.details, status.trailing_metadata)

    return wrapper


def _user(user: UserRecord) -> auth_pb2.User:
    return auth_pb2.User(
        user_id=user.user_id, app_id=user.app_id, openid=user.openid, unionid=user.unionid or ""
    )


def _timestamp(moment: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def _deadline(context: grpc.aio.ServicerContext[Req, Resp]) -> float | None:
    remaining = context.time_remaining()
    if remaining is None:
        return None
    return asyncio.get_running_loop().time() + remaining


class AuthServicer(auth_pb2_grpc.AuthServiceServicer):
    """wxlogin.v1.AuthService on top of the domain's Sessions and UserDataDecryptor."""

    def __init__(
        self,
        sessions: Sessions,
        user_data: UserDataDecryptor,
        limits: InFlightLimits | None = None,
    ) -> None:
        self._sessions = sessions
        self._user_data = user_data
        self._limits = limits or InFlightLimits()

    @_rpc
    async def Login(
        self,
        request: auth_pb2.LoginRequest,
        context: grpc.aio.ServicerContext[auth_pb2.LoginRequest, auth_pb2.LoginResponse],
    ) -> auth_pb2.LoginResponse:
        result = await self._sessions.login(
            request.app_id, request.code, deadline=_deadline(context)
        )
        return auth_pb2.LoginResponse(
            token=result.token,
            expires_at=_timestamp(result.expires_at),
            user=_user(result.user),
            new_user=result.new_user,
        )

    @_rpc
    async def CheckSession(
        self,
        request: auth_pb2.CheckSessionRequest,
        context: grpc.aio.ServicerContext[
            auth_pb2.CheckSessionRequest, auth_pb2.CheckSessionResponse
        ],
    ) -> auth_pb2.CheckSessionResponse:
        record = await self._sessions.check(request.token, deadline=_deadline(context))
        return auth_pb2.CheckSessionResponse(
            user=_user(record.user), expires_at=_timestamp(record.expires_at)
        )

    @_rpc
    async def DecryptUserData(
        self,
        request: auth_pb2.DecryptUserDataRequest,
        context: grpc.aio.ServicerContext[
            auth_pb2.DecryptUserDataRequest, auth_pb2.DecryptUserDataResponse
        ],
    ) -> auth_pb2.DecryptUserDataResponse:
        result = await self._user_data.decrypt(
            request.token,
            request.encrypted_data,
            request.iv,
            request.raw_data,
            request.signature,
            deadline=_deadline(context),
        )
        data = struct_pb2.Struct()
        data.update(result.data)
        response = auth_pb2.DecryptUserDataResponse(data=data)
        if result.watermark_time is not None:
            response.watermark_time.CopyFrom(_timestamp(result.watermark_time))
        return response

    @_rpc
    async def RevokeSession(
        self,
        request: auth_pb2.RevokeSessionRequest,
        context: grpc.aio.ServicerContext[
            auth_pb2.RevokeSessionRequest, auth_pb2.RevokeSessionResponse
        ],
    ) -> auth_pb2.RevokeSessionResponse:
        await self._sessions.revoke(request.token, deadline=_deadline(context))
        return auth_pb2.RevokeSessionResponse()
