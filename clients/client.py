"""`WxLoginClient`: typed async calls to wxlogin with deadlines and bounded, safe retries."""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import grpc
from google.protobuf import json_format, struct_pb2, timestamp_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from clients._errors import (
    DeadlineExceeded,
    InternalError,
    ServiceUnavailable,
    WxLoginError,
    from_rpc_error,
)
from clients._models import AccessToken, LoginResult, PhoneNumber, Session, User, UserData
from clients._upstream import CALLER_KEY_METADATA, TlsConfig, is_caller_key
from clients.session_cache import SessionCache
from wxlogin.v1 import auth_pb2, auth_pb2_grpc

Req = TypeVar("Req")
Resp = TypeVar("Resp")

SERVICE_NAME = auth_pb2.DESCRIPTOR.services_by_name["AuthService"].full_name
REQUEST_ID_METADATA = "x-request-id"
# Printable ASCII without spaces: always a valid gRPC metadata value, and
# unable to break a log line. A request id of any other shape is not sent.
_REQUEST_ID = re.compile(r"[!-~]{1,128}")

# grpc's default reconnect backoff grows to 120 s; a backend should notice a
# restarted wxlogin within a couple of seconds, not minutes.
DEFAULT_CHANNEL_OPTIONS: Sequence[tuple[str, Any]] = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2000),
    ("grpc.keepalive_time_ms", 30_000),
)

# Login is retried only when wxlogin's answer never came (see WxLoginClient).
_ANSWER_LOST = frozenset({ServiceUnavailable.default_reason})
# Doubles carry integers exactly up to 2**53; see _plain_numbers.
_EXACT_INT_LIMIT = 2**53
# An access_token is used from memory until this long before its expires_at (at
# most a quarter of the life it had left when fetched): time for the call it is for.
_ACCESS_TOKEN_MARGIN = 60.0


@dataclass(frozen=True)
class Deadlines:
    """Seconds each call may take in all, retries included."""

    # Login waits on WeChat, which the service retries within this budget.
    login: float = 10.0
    # Backends call this on every request they serve: fail fast.
    check_session: float = 2.0
    decrypt_user_data: float = 5.0
    revoke_session: float = 5.0
    revoke_all_sessions: float = 5.0
    health: float = 1.0
    # These wait on WeChat (GetAccessToken only when wxlogin has no token yet).
    get_phone_number: float = 10.0
    get_access_token: float = 10.0
    check_session_key: float = 10.0
    reset_session_key: float = 10.0


@dataclass(frozen=True)
class RetryPolicy:
    """Retries of idempotent calls on UNAVAILABLE: full-jitter exponential backoff."""

    attempts: int = 3  # in all, the first included; 1 turns retries off
    initial_backoff: float = 0.05
    max_backoff: float = 1.0
    multiplier: float = 2.0

    def backoff(self, retry: int) -> float:
        """The pause before retry number `retry` (1-based)."""
        ceiling = min(self.max_backoff, self.initial_backoff * self.multiplier ** (retry - 1))
        return random.uniform(0, ceiling)


def is_request_id(value: str) -> bool:
    """True when `value` can travel as the x-request-id metadata (and into logs) as is."""
    return _REQUEST_ID.fullmatch(value) is not None


def open_channel(
    target: str,
    *,
    options: Sequence[tuple[str, Any]] = DEFAULT_CHANNEL_OPTIONS,
    tls: TlsConfig | None = None,
) -> grpc.aio.Channel:
    """A channel to wxlogin with quick reconnects: TLS (mTLS with a client cert) or plaintext.

    Plaintext is for loopback and the dev stack; wxlogin refuses to listen
    beyond loopback without TLS unless told to (WXLOGIN_ALLOW_INSECURE).
    """
    if tls is None:
        return grpc.aio.insecure_channel(target, options=list(options))
    return grpc.aio.secure_channel(target, tls.channel_credentials(), options=list(options))


class WxLoginClient:
    """Calls wxlogin.v1.AuthService over a channel the caller owns (see `connect`).

    Every call has a deadline (`Deadlines`). Only calls that are safe to repeat
    are retried, and only on UNAVAILABLE: check_session, decrypt_user_data,
    revoke_session and revoke_all_sessions. Login only when wxlogin's answer never
    arrived (ServiceUnavailable: unreachable, or the answer lost on the way):
    wxlogin keeps a code's answer, so the same code again gets the same session.
    On WECHAT_UNAVAILABLE and the like, retrying would only multiply WeChat's load.

    `caller_key` is sent with every call as metadata x-wxlogin-caller-key: how
    this backend proves who it is when wxlogin has a callers file (or use an
    mTLS client certificate, `open_channel(tls=...)`).
    """

    def __init__(
        self,
        channel: grpc.aio.Channel,
        *,
        deadlines: Deadlines | None = None,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        session_cache: SessionCache | None = None,
        caller_key: str | None = None,
    ) -> None:
        if caller_key is not None and not is_caller_key(caller_key):
            raise ValueError("a caller key is 16-256 printable ASCII characters, no spaces")
        # Built once: every call sends it.
        self._caller_metadata: tuple[tuple[str, str], ...] = (
            () if caller_key is None else ((CALLER_KEY_METADATA, caller_key),)
        )
        self._stub = auth_pb2_grpc.AuthServiceStub(channel)
        self._health = health_pb2_grpc.HealthStub(channel)
        self.deadlines = deadlines or Deadlines()
        self.retry = retry or RetryPolicy()
        self._sleep = sleep
        # Opt-in (see clients/session_cache.py): answers check_session from memory
        # for a few seconds, never past a session's expires_at.
        self.session_cache = session_cache
        # app_id -> (token, use it until this loop.time()); see get_access_token.
        self._access_tokens: dict[str, tuple[AccessToken, float]] = {}
        self._access_token_locks: dict[str, asyncio.Lock] = {}

    async def login(
        self, code: str, *, app_id: str = "", request_id: str | None = None
    ) -> LoginResult:
        """Exchange a wx.login() code for a session; `app_id` may be empty with one app."""
        reply = await self._call(
            self._stub.Login,
            auth_pb2.LoginRequest(app_id=app_id, code=code),
            budget=self.deadlines.login,
            idempotent=True,
            request_id=request_id,
            retry_only=_ANSWER_LOST,
        )
        return LoginResult(
            token=reply.token,
            expires_at=_datetime(reply.expires_at),
            user=_user(reply.user),
            new_user=reply.new_user,
        )

    async def check_session(self, token: str, *, request_id: str | None = None) -> Session:
        """The user and expiry behind a token; SessionInvalid or SessionExpired otherwise."""
        generation = 0
        if self.session_cache is not None:
            cached = self.session_cache.get(token)
            if cached is not None:
                return cached
            generation = self.session_cache.generation
        reply = await self._call(
            self._stub.CheckSession,
            auth_pb2.CheckSessionRequest(token=token),
            budget=self.deadlines.check_session,
            idempotent=True,
            request_id=request_id,
        )
        session = Session(user=_user(reply.user), expires_at=_datetime(reply.expires_at))
        if self.session_cache is not None:
            self.session_cache.put(token, session, generation=generation)
        return session

    async def decrypt_user_data(
        self,
        token: str,
        encrypted_data: str,
        iv: str,
        *,
        raw_data: str = "",
        signature: str = "",
        code: str = "",
        request_id: str | None = None,
    ) -> UserData:
        """Decrypt WeChat's encryptedData with the user's session_key; checks signature if given.

        `code`: a fresh wx.login() code the mini-program fetched just before the
        data; wxlogin exchanges it first, so the key is WeChat's current one. Without
        it, SessionKeyStale says the mini-program must do that (and resend).
        """
        reply = await self._call(
            self._stub.DecryptUserData,
            auth_pb2.DecryptUserDataRequest(
                token=token,
                encrypted_data=encrypted_data,
                iv=iv,
                raw_data=raw_data,
                signature=signature,
                code=code,
            ),
            budget=self.deadlines.decrypt_user_data,
            # A code is single use: a second try could only fail with CODE_USED.
            idempotent=not code,
            request_id=request_id,
        )
        return UserData(data=_struct(reply.data), watermark_time=_watermark(reply))

    async def revoke_session(self, token: str, *, request_id: str | None = None) -> None:
        """End a session now (log out); unknown and already revoked tokens are fine."""
        if self.session_cache is not None:
            self.session_cache.drop(token)
        await self._call(
            self._stub.RevokeSession,
            auth_pb2.RevokeSessionRequest(token=token),
            budget=self.deadlines.revoke_session,
            idempotent=True,
            request_id=request_id,
        )
        if self.session_cache is not None:
            # Again: a check that asked between the first drop and the revoke was told OK.
            self.session_cache.drop(token)

    async def revoke_all_sessions(
        self, token: str = "", *, user_id: str = "", request_id: str | None = None
    ) -> int:
        """Log a user out everywhere; how many live sessions ended. Give exactly one of the two.

        `token`: one of the user's tokens, which must be live (a dead one ends
        nothing: 0). `user_id`: any user, for a backend granted
        "RevokeAllSessions:user_id" in wxlogin's callers file (CallerForbidden
        otherwise). Safe to retry: the second time there is nothing left to end.
        This client's session cache forgets the user (everything, for a token it
        never saw: whose other tokens it holds is unknown); other processes' caches
        (the edge's, other backends') keep serving the user's other tokens for
        their `max_age` at most.
        """
        if bool(token) == bool(user_id):
            raise ValueError("give exactly one of token and user_id")
        request = (
            auth_pb2.RevokeAllSessionsRequest(token=token)
            if token
            else auth_pb2.RevokeAllSessionsRequest(user_id=user_id)
        )
        reply = await self._call(
            self._stub.RevokeAllSessions,
            request,
            budget=self.deadlines.revoke_all_sessions,
            idempotent=True,
            request_id=request_id,
        )
        if self.session_cache is not None:
            cached = self.session_cache.get(token) if token else None
            if cached is None and token:
                # Whose tokens these were is not known here: forget them all.
                self.session_cache.clear()
            else:
                self.session_cache.drop_user(cached.user.user_id if cached else user_id)
                self.session_cache.drop(token)
        return int(reply.revoked)

    async def get_phone_number(
        self, token: str, phone_code: str, *, request_id: str | None = None
    ) -> PhoneNumber:
        """The session user's phone number for a getPhoneNumber button's code (single use)."""
        reply = await self._call(
            self._stub.GetPhoneNumber,
            auth_pb2.GetPhoneNumberRequest(token=token, phone_code=phone_code),
            budget=self.deadlines.get_phone_number,
            idempotent=False,
            request_id=request_id,
        )
        return PhoneNumber(
            phone_number=reply.phone_number,
            pure_phone_number=reply.pure_phone_number,
            country_code=reply.country_code,
            watermark_time=_watermark(reply),
        )

    async def get_access_token(
        self, app_id: str = "", *, rejected_token: str = "", request_id: str | None = None
    ) -> AccessToken:
        """The app's WeChat access_token, the same one every backend gets.

        Served from memory until shortly before its `expires_at`. When WeChat
        refuses it (errcode 40001, 40014 or 42001), call again with
        `rejected_token=` the refused token: wxlogin replaces it (once, however
        many backends report it) and every caller gets the new one. Needs a
        caller granted GetAccessToken by name in wxlogin's callers file.
        """
        loop = asyncio.get_running_loop()
        cached = self._usable_access_token(app_id, rejected_token)
        if cached is not None:
            return cached
        lock = self._access_token_locks.setdefault(app_id, asyncio.Lock())
        async with lock:
            # Another caller may have fetched (or replaced) it while we waited.
            cached = self._usable_access_token(app_id, rejected_token)
            if cached is not None:
                return cached
            reply = await self._call(
                self._stub.GetAccessToken,
                auth_pb2.GetAccessTokenRequest(app_id=app_id, rejected_token=rejected_token),
                budget=self.deadlines.get_access_token,
                idempotent=True,
                request_id=request_id,
            )
            token = AccessToken(reply.access_token, _datetime(reply.expires_at))
            left = (token.expires_at - datetime.now(UTC)).total_seconds()
            use_until = loop.time() + left - min(_ACCESS_TOKEN_MARGIN, max(left, 0) / 4)
            self._access_tokens[app_id] = (token, use_until)
            return token

    def _usable_access_token(self, app_id: str, rejected_token: str) -> AccessToken | None:
        """The app's token from memory, unless it is due or is the one being rejected."""
        cached = self._access_tokens.get(app_id)
        if cached is None or asyncio.get_running_loop().time() >= cached[1]:
            return None
        return None if cached[0].access_token == rejected_token else cached[0]

    async def check_session_key(self, token: str, *, request_id: str | None = None) -> bool:
        """Whether WeChat still holds the session_key wxlogin holds for this user as current."""
        reply = await self._call(
            self._stub.CheckSessionKey,
            auth_pb2.CheckSessionKeyRequest(token=token),
            budget=self.deadlines.check_session_key,
            idempotent=True,
            request_id=request_id,
        )
        return bool(reply.valid)

    async def reset_session_key(self, token: str, *, request_id: str | None = None) -> None:
        """Have WeChat replace the user's session_key; wxlogin keeps the new one.

        SessionKeyStale when wxlogin's key is no longer current (wx.login() ran
        since): send a fresh code with decrypt_user_data instead.
        """
        await self._call(
            self._stub.ResetSessionKey,
            auth_pb2.ResetSessionKeyRequest(token=token),
            budget=self.deadlines.reset_session_key,
            # Not retried: after a reset that WeChat did but whose answer was lost,
            # a second one signs with the old key and can only fail.
            idempotent=False,
            request_id=request_id,
        )

    async def serving(self) -> bool:
        """True when wxlogin's health service says it is SERVING (MongoDB answers)."""
        try:
            reply = await self._health.Check(
                health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=self.deadlines.health
            )
        except grpc.aio.AioRpcError:
            return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    async def _call(
        self,
        rpc: grpc.aio.UnaryUnaryMultiCallable[Req, Resp],
        request: Req,
        *,
        budget: float,
        idempotent: bool,
        request_id: str | None,
        retry_only: frozenset[str] | None = None,
    ) -> Resp:
        loop = asyncio.get_running_loop()
        # The deadline covers the whole call, retries and pauses included.
        deadline = loop.time() + budget
        metadata = (
            (*self._caller_metadata, (REQUEST_ID_METADATA, request_id))
            if request_id is not None and is_request_id(request_id)
            else self._caller_metadata or None
        )
        attempt = 1
        while True:
            try:
                reply = await rpc(request, timeout=deadline - loop.time(), metadata=metadata)
                if reply is None:
                    # grpc's way of saying it could not decode the answer (e.g. a Struct
                    # nested past protobuf's 100 levels): an error, never a None to use.
                    raise InternalError("wxlogin's answer could not be decoded")
                return reply
            except grpc.aio.AioRpcError as failure:
                error: WxLoginError = from_rpc_error(failure)
                cause = failure
            retryable = idempotent and error.code is grpc.StatusCode.UNAVAILABLE
            if retry_only is not None:
                retryable = retryable and error.reason in retry_only
            if not retryable or attempt >= self.retry.attempts:
                raise error from cause
            pause = self.retry.backoff(attempt)
            if loop.time() + pause >= deadline:
                # Waiting would only turn UNAVAILABLE into DEADLINE_EXCEEDED.
                raise error from cause
            await self._sleep(pause)
            attempt += 1
            if loop.time() >= deadline:
                raise DeadlineExceeded("wxlogin did not answer in time") from cause


@asynccontextmanager
async def connect(
    target: str,
    *,
    deadlines: Deadlines | None = None,
    retry: RetryPolicy | None = None,
    options: Sequence[tuple[str, Any]] = DEFAULT_CHANNEL_OPTIONS,
    tls: TlsConfig | None = None,
    caller_key: str | None = None,
) -> AsyncIterator[WxLoginClient]:
    """A client with its own channel, closed on exit. Create one per process and share it.

    In production: `connect(target, tls=TlsConfig.from_files(ca, cert, key),
    caller_key=...)`; `UpstreamConfig.from_env(os.environ)` reads both from the
    WXLOGIN_UPSTREAM_CA/_CERT/_KEY and WXLOGIN_CALLER_KEY variables.
    """
    channel = open_channel(target, options=options, tls=tls)
    try:
        yield WxLoginClient(channel, deadlines=deadlines, retry=retry, caller_key=caller_key)
    finally:
        await channel.close()


def _user(user: auth_pb2.User) -> User:
    return User(
        user_id=user.user_id,
        app_id=user.app_id,
        openid=user.openid,
        unionid=user.unionid or None,
        # A wxlogin without linked accounts sends none: the user is its own account.
        account_id=user.account_id or user.user_id,
    )


def _datetime(stamp: timestamp_pb2.Timestamp) -> datetime:
    return stamp.ToDatetime(tzinfo=UTC)


def _watermark(
    reply: auth_pb2.DecryptUserDataResponse | auth_pb2.GetPhoneNumberResponse,
) -> datetime | None:
    """The watermark's time, when WeChat's data had one."""
    return _datetime(reply.watermark_time) if reply.HasField("watermark_time") else None


def _struct(data: struct_pb2.Struct) -> dict[str, Any]:
    try:
        converted = json_format.MessageToDict(data)
    except (ValueError, RecursionError):
        # NaN or Infinity (no JSON holds them), or nesting past Python's stack.
        raise InternalError("wxlogin's answer holds data that is not JSON") from None
    plain = _plain_numbers(converted)
    assert isinstance(plain, dict)  # a Struct is always a JSON object
    return plain


def _plain_numbers(value: Any) -> Any:
    # A Struct stores every number as a double, so WeChat's integers (timestamp,
    # gender) would come back as 1700000000.0; integral values become ints again.
    if isinstance(value, float) and value.is_integer() and abs(value) < _EXACT_INT_LIMIT:
        return int(value)
    if isinstance(value, dict):
        return {key: _plain_numbers(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain_numbers(item) for item in value]
    return value
