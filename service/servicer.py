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

from service.errors import BadRequest, InternalError, WxLoginError, to_grpc_status
from service.records import UserRecord
from service.sessions import Sessions
from service.user_data import UserDataDecryptor
from wxlogin.v1 import auth_pb2, auth_pb2_grpc

log = logging.getLogger(__name__)

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Handler = Callable[["AuthServicer", Req, grpc.aio.ServicerContext[Req, Resp]], Awaitable[Resp]]


def _rpc(handler: Handler[Req, Resp]) -> Handler[Req, Resp]:
    """Turn every failure into a status with ErrorInfo; nothing internal leaks."""

    @functools.wraps(handler)
    async def wrapper(
        self: AuthServicer, request: Req, context: grpc.aio.ServicerContext[Req, Resp]
    ) -> Resp:
        try:
            return await handler(self, request, context)
        except WxLoginError as known:
            error: WxLoginError = known
            log.info("%s failed: %s", handler.__name__, error.reason)
        except (ValueError, TypeError) as malformed:
            # e.g. a Struct that can't hold the decrypted JSON; never a traceback.
            log.warning("%s rejected input: %s", handler.__name__, type(malformed).__name__)
            error = BadRequest("request could not be processed")
        except asyncio.CancelledError:
            raise  # the caller went away or the deadline passed
        except Exception:
            log.exception("%s crashed", handler.__name__)
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

    def __init__(self, sessions: Sessions, user_data: UserDataDecryptor) -> None:
        self._sessions = sessions
        self._user_data = user_data

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
