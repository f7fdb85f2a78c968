"""Translates between proto messages and the domain; errors become status in one place."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

import grpc
from google.protobuf import timestamp_pb2

from runtime import log_context
from runtime.ratelimited_log import RateLimitedLog
from service.access_tokens import AccessTokens
from service.cache import CACHE_ENTRIES
from service.callers import CallerGuard, act_as, end_acting
from service.errors import BadRequest, InternalError, WxLoginError, to_grpc_status
from service.limits import InFlightLimits
from service.metrics import Metrics
from service.phone_numbers import PhoneNumbers
from service.records import SessionRecord, UserRecord
from service.request_ids import RequestIds
from service.rpc_handlers import Undecodable
from service.sessions import Sessions
from service.user_data import UserDataDecryptor
from service.wxa_session_keys import WxaSessionKeys
from wxlogin.v1 import auth_pb2, auth_pb2_grpc

log = logging.getLogger(__name__)

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Handler = Callable[["AuthServicer", Req, grpc.aio.ServicerContext[Req, Resp]], Awaitable[Resp]]

# (gRPC code, reason) for the metrics; a call that ends otherwise was cancelled
# (the caller went away, or its deadline passed).
_OK = ("OK", "")
_CANCELLED = ("CANCELLED", "")


def _rpc(handler: Handler[Req, Resp]) -> Handler[Req, Resp]:
    """Turn every failure into a status with ErrorInfo; nothing internal leaks.

    Also what every call shares, refused ones included: its request id (and
    caller) on each of its log lines (runtime/log_context.py), the caller check
    (service/callers.py), and its count and latency in the metrics.

    One coroutine per call around the handler's: each nested one (the wrapper used
    to await an admission step, which awaited an answer step) is a coroutine object,
    a frame and a send/return more on every CheckSession.
    """
    name = handler.__name__

    @functools.wraps(handler)
    async def wrapper(
        self: AuthServicer,
        request: Req | Undecodable,
        context: grpc.aio.ServicerContext[Req, Resp],
    ) -> Resp:
        started = time.perf_counter()
        # Built anew (~2 us) at each invocation_metadata(): once per call, shared.
        metadata = tuple(context.invocation_metadata() or ())  # already a tuple: no copy
        call = log_context.begin(self._request_ids.of_call(metadata))
        outcome = _CANCELLED
        acting = None
        try:
            error = None
            if self._guard is not None:
                # With callers configured, the caller first: an unknown one learns nothing more.
                try:
                    acting = act_as(self._guard.admit(name, context, metadata))
                except WxLoginError as refused:
                    error = refused  # logged by the guard: rate-limited, with the peer
            if error is None:
                if isinstance(request, Undecodable):
                    error = self._undecodable(name, request)
                else:
                    try:
                        # Past the bound for its kind of work, a call is refused at once
                        # (OVERLOADED) instead of queueing behind a stalled dependency.
                        with self._limits.slot(name):
                            answer = await handler(self, request, context)
                        outcome = _OK
                        return answer
                    except asyncio.CancelledError:
                        raise  # the caller went away or the deadline passed
                    except Exception as failure:
                        error = self._failed(name, failure)
            status = to_grpc_status(error)
            outcome = (status.code.name, error.reason)
            await context.abort(status.code, status.details, status.trailing_metadata)
        finally:
            if acting is not None:
                end_acting(acting)
            try:
                if self._metrics is not None:
                    # The caller as admitted (or refused, when known): "" without one.
                    caller = getattr(log_context.current(), "caller", None) or ""
                    self._metrics.rpc(name, *outcome, caller, time.perf_counter() - started)
            finally:
                log_context.end(call)
        raise AssertionError("abort() returns only by raising")  # pragma: no cover

    return wrapper


@dataclass(frozen=True)
class WeChatBound:
    """The domain objects of the RPCs that call WeChat with the app's access_token."""

    access_tokens: AccessTokens
    phone_numbers: PhoneNumbers
    session_keys: WxaSessionKeys


def _user(user: UserRecord) -> auth_pb2.User:
    return auth_pb2.User(
        user_id=user.user_id,
        app_id=user.app_id,
        openid=user.openid,
        unionid=user.unionid or "",
        account_id=user.account,
    )


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _timestamp(moment: datetime) -> timestamp_pb2.Timestamp:
    # Built from its fields: Timestamp.FromDatetime is protobuf's pure Python (5.5 us,
    # against 1.7 us here), and every Login, DecryptUserData and GetPhoneNumber answer has one.
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)  # as FromDatetime takes a naive one: UTC
    since = moment - _EPOCH
    return timestamp_pb2.Timestamp(
        seconds=since.days * 86400 + since.seconds, nanos=since.microseconds * 1000
    )


class CheckAnswers:
    """CheckSession's response per session record, built once and shared by its checks.

    Building it (a User, a Timestamp from a datetime) was ~5 % of a CheckSession
    answered from the session cache, which hands out the same record object until
    the session changes (renewed, re-cached): so an answer is reused only while its
    record is that very object, and a changed session gets a new one. Answers are
    never modified once built; grpc only serializes them. Bounded like the session
    cache, so every cached session can have its answer; the oldest goes first. And
    aged like it: the cache hands a record out for `max_age` seconds at most, after
    which its answer can never be reused, so it is dropped (without that, every
    record ever checked stayed, up to `max_entries`: a soak's memory grew ~20 %).
    """

    def __init__(
        self,
        max_age: float,
        max_entries: int = CACHE_ENTRIES,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._max_age = max_age
        self._max_entries = max_entries
        self._monotonic = monotonic
        # session id -> (when built, record, answer), oldest first.
        self._answers: OrderedDict[
            str, tuple[float, SessionRecord, auth_pb2.CheckSessionResponse]
        ] = OrderedDict()

    def of(self, record: SessionRecord) -> auth_pb2.CheckSessionResponse:
        """The response for `record`."""
        entry = self._answers.get(record.session_id)
        if entry is not None and entry[1] is record:
            return entry[2]
        answer = auth_pb2.CheckSessionResponse(
            user=_user(record.user), expires_at=_timestamp(record.expires_at)
        )
        if entry is None and len(self._answers) >= self._max_entries:
            self._answers.popitem(last=False)  # O(1), unlike deleting a dict's first key
        now = self._monotonic()
        self._answers[record.session_id] = (now, record, answer)
        self._answers.move_to_end(record.session_id)
        # As in the session cache: at most two stale ones per new answer, O(1), and
        # still faster than new answers arrive.
        for _ in range(2):
            oldest = next(iter(self._answers.values()))
            if now - oldest[0] <= self._max_age:
                break
            self._answers.popitem(last=False)
        return answer

    def __len__(self) -> int:
        return len(self._answers)


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
        metrics: Metrics | None = None,
        wechat_bound: WeChatBound | None = None,
        guard: CallerGuard | None = None,
        session_cache_seconds: float = 5.0,
    ) -> None:
        # guard: with a callers file, every AuthService call is admitted by it first.
        # session_cache_seconds: how long the session cache hands out one record.
        self._guard = guard
        self._sessions = sessions
        self._user_data = user_data
        self._token_rpcs = wechat_bound
        self._limits = limits or InFlightLimits()
        self._metrics = metrics
        self._request_ids = RequestIds()
        self._check_answers = CheckAnswers(session_cache_seconds)
        # Crashes and rejected input can repeat on every request; one line (or one
        # traceback) per cause per minute, with the count of the rest, is enough to act on.
        self._quiet = RateLimitedLog(log)

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
        # From memory without a coroutine when it can; from MongoDB otherwise.
        record = self._sessions.check_in_memory(request.token) or await self._sessions.check_stored(
            request.token, deadline=_deadline(context)
        )
        return self._check_answers.of(record)

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
            code=request.code,
            deadline=_deadline(context),
        )
        # Filled in place: a Struct built apart and passed as data= is copied into the
        # response (~6 us of a ~25 us build for a wx.getUserInfo payload).
        response = auth_pb2.DecryptUserDataResponse()
        response.data.update(result.data)
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

    @_rpc
    async def RevokeAllSessions(
        self,
        request: auth_pb2.RevokeAllSessionsRequest,
        context: grpc.aio.ServicerContext[
            auth_pb2.RevokeAllSessionsRequest, auth_pb2.RevokeAllSessionsResponse
        ],
    ) -> auth_pb2.RevokeAllSessionsResponse:
        who = request.WhichOneof("who")
        if who == "token":
            revoked = await self._sessions.revoke_all_by_token(
                request.token, deadline=_deadline(context)
            )
        elif who == "user_id":
            revoked = await self._sessions.revoke_all_of_user(
                request.user_id, deadline=_deadline(context)
            )
        else:
            raise BadRequest("give token or user_id")
        return auth_pb2.RevokeAllSessionsResponse(revoked=revoked)

    @_rpc
    async def GetPhoneNumber(
        self,
        request: auth_pb2.GetPhoneNumberRequest,
        context: grpc.aio.ServicerContext[
            auth_pb2.GetPhoneNumberRequest, auth_pb2.GetPhoneNumberResponse
        ],
    ) -> auth_pb2.GetPhoneNumberResponse:
        number = await self._wechat_bound().phone_numbers.get(
            request.token, request.phone_code, deadline=_deadline(context)
        )
        response = auth_pb2.GetPhoneNumberResponse(
            phone_number=number.phone_number,
            pure_phone_number=number.pure_phone_number,
            country_code=number.country_code,
        )
        if number.watermark_time is not None:
            response.watermark_time.CopyFrom(_timestamp(number.watermark_time))
        return response

    @_rpc
    async def GetAccessToken(
        self,
        request: auth_pb2.GetAccessTokenRequest,
        context: grpc.aio.ServicerContext[
            auth_pb2.GetAccessTokenRequest, auth_pb2.GetAccessTokenResponse
        ],
    ) -> auth_pb2.GetAccessTokenResponse:
        token = await self._wechat_bound().access_tokens.get(
            request.app_id, request.rejected_token, deadline=_deadline(context)
        )
        return auth_pb2.GetAccessTokenResponse(
            access_token=token.token, expires_at=_timestamp(token.expires_at)
        )

    @_rpc
    async def CheckSessionKey(
        self,
        request: auth_pb2.CheckSessionKeyRequest,
        context: grpc.aio.ServicerContext[
            auth_pb2.CheckSessionKeyRequest, auth_pb2.CheckSessionKeyResponse
        ],
    ) -> auth_pb2.CheckSessionKeyResponse:
        valid = await self._wechat_bound().session_keys.check(
            request.token, deadline=_deadline(context)
        )
        return auth_pb2.CheckSessionKeyResponse(valid=valid)

    @_rpc
    async def ResetSessionKey(
        self,
        request: auth_pb2.ResetSessionKeyRequest,
        context: grpc.aio.ServicerContext[
            auth_pb2.ResetSessionKeyRequest, auth_pb2.ResetSessionKeyResponse
        ],
    ) -> auth_pb2.ResetSessionKeyResponse:
        await self._wechat_bound().session_keys.reset(request.token, deadline=_deadline(context))
        return auth_pb2.ResetSessionKeyResponse()

    def _undecodable(self, name: str, request: Undecodable) -> WxLoginError:
        """BAD_REQUEST for bytes that are not the request message (rpc_handlers.py)."""
        # Junk can come by the thousand: one line per cause per interval.
        kind = request.error_kind
        self._quiet.log(
            logging.WARNING,
            f"{name}: undecodable {kind}",
            "%s: request bytes are not a %s (%s); answered BAD_REQUEST",
            name,
            request.message_type,
            kind,
        )
        return BadRequest(f"the request is not a valid {request.message_type}")

    def _failed(self, name: str, failure: Exception) -> WxLoginError:
        """The error to answer a handler's failure with, logged at most once a minute per cause."""
        if isinstance(failure, WxLoginError):
            # Per call, a failure is counted (metrics) and answered with its reason;
            # a line each would let a flood of bad tokens flood the log (and cost
            # ~10 % of an unknown-token CheckSession): one per reason a minute.
            self._quiet.log(
                logging.INFO, f"{name} {failure.reason}", "%s failed: %s", name, failure.reason
            )
            return failure
        if isinstance(failure, ValueError | TypeError | OverflowError):
            # e.g. a Struct that can't hold the decrypted JSON (an integer beyond a
            # double: OverflowError); never a traceback, and never the exception's text
            # (it may quote the input).
            kind = type(failure).__name__
            self._quiet.log(logging.WARNING, f"{name}: {kind}", "%s rejected input: %s", name, kind)
            return BadRequest("request could not be processed")
        cause = f"{name} crashed: {type(failure).__name__}"
        self._quiet.log(logging.ERROR, cause, "%s crashed", name, exc_info=failure)
        return InternalError()

    def _wechat_bound(self) -> WeChatBound:
        if self._token_rpcs is None:
            raise InternalError("this server was built without the access-token RPCs")
        return self._token_rpcs
