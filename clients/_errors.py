"""The client's exception tree, keyed on the ErrorInfo `reason` wxlogin sends.

    WxLoginError                      every failed call: .code, .reason, .message, .metadata
    ├── InvalidRequest                INVALID_ARGUMENT: fix the request; retrying won't help
    │   ├── BadRequest                BAD_REQUEST
    │   ├── AppUnknown                APP_UNKNOWN
    │   ├── DecryptFailed             DECRYPT_FAILED
    │   ├── WatermarkExpired          WATERMARK_EXPIRED
    │   └── SignatureMismatch         SIGNATURE_MISMATCH
    ├── Unauthenticated               UNAUTHENTICATED: the user must (re)run wx.login()
    │   ├── CodeInvalid               CODE_INVALID
    │   ├── CodeUsed                  CODE_USED
    │   ├── SessionInvalid            SESSION_INVALID
    │   └── SessionExpired            SESSION_EXPIRED
    ├── PermissionDenied              PERMISSION_DENIED
    │   ├── UserBlocked               USER_BLOCKED
    │   ├── WatermarkMismatch         WATERMARK_MISMATCH
    │   └── CodeUserMismatch          CODE_USER_MISMATCH (the code is another user's)
    ├── FailedPrecondition            FAILED_PRECONDITION: do the named step first
    │   └── SessionKeyStale           SESSION_KEY_STALE: call wx.login() and send the
    │                                 code with the data (decrypt_user_data(code=...))
    ├── RateLimited                   RESOURCE_EXHAUSTED, RATE_LIMITED: slow down
    │   └── Overloaded                OVERLOADED (wxlogin sheds load; back off, then retry)
    ├── Unavailable                   UNAVAILABLE: retry later
    │   ├── WeChatUnavailable         WECHAT_UNAVAILABLE
    │   ├── WeChatError               WECHAT_ERROR (errcode in .metadata)
    │   ├── StoreUnavailable          STORE_UNAVAILABLE
    │   └── ServiceUnavailable        SERVICE_UNAVAILABLE (no ErrorInfo: wxlogin unreachable)
    ├── CallerError                   this backend's own credentials or grant: fix its
    │   │                             configuration; never the user's fault (HTTP 500)
    │   ├── CallerUnauthenticated     UNAUTHENTICATED, CALLER_UNAUTHENTICATED: no or
    │   │                             unknown caller key / client certificate
    │   └── CallerForbidden           PERMISSION_DENIED, CALLER_FORBIDDEN: this RPC or
    │                                 app is outside the caller's grant
    ├── DeadlineExceeded              DEADLINE_EXCEEDED (the call's deadline passed)
    └── InternalError                 INTERNAL, and any status this client does not know

A reason this client version does not know (a newer service) becomes the class
of its gRPC code, with `.reason` still the one the service sent.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import grpc
from google.rpc import error_details_pb2, status_pb2

DOMAIN = "wxlogin"
_STATUS_DETAILS_KEY = "grpc-status-details-bin"


class WxLoginError(Exception):
    """A failed wxlogin call. Branch on the class (or `.reason`), never on `.message`."""

    code: ClassVar[grpc.StatusCode] = grpc.StatusCode.INTERNAL
    default_reason: ClassVar[str] = "INTERNAL"
    # None: the HTTP status follows from `code` (clients/http_errors.py).
    http_status: ClassVar[int | None] = None

    def __init__(
        self,
        message: str = "",
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        self.reason = reason or self.default_reason
        self.message = message or self.reason
        self.metadata: dict[str, str] = dict(metadata or {})
        super().__init__(self.message)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(reason={self.reason!r}, message={self.message!r})"


class InvalidRequest(WxLoginError):
    code = grpc.StatusCode.INVALID_ARGUMENT
    default_reason = "BAD_REQUEST"


class BadRequest(InvalidRequest):
    default_reason = "BAD_REQUEST"


class AppUnknown(InvalidRequest):
    default_reason = "APP_UNKNOWN"


class DecryptFailed(InvalidRequest):
    default_reason = "DECRYPT_FAILED"


class WatermarkExpired(InvalidRequest):
    default_reason = "WATERMARK_EXPIRED"


class SignatureMismatch(InvalidRequest):
    default_reason = "SIGNATURE_MISMATCH"


class Unauthenticated(WxLoginError):
    code = grpc.StatusCode.UNAUTHENTICATED
    default_reason = "SESSION_INVALID"


class CodeInvalid(Unauthenticated):
    default_reason = "CODE_INVALID"


class CodeUsed(Unauthenticated):
    default_reason = "CODE_USED"


class SessionInvalid(Unauthenticated):
    default_reason = "SESSION_INVALID"


class SessionExpired(Unauthenticated):
    default_reason = "SESSION_EXPIRED"


class PermissionDenied(WxLoginError):
    code = grpc.StatusCode.PERMISSION_DENIED
    default_reason = "PERMISSION_DENIED"


class UserBlocked(PermissionDenied):
    default_reason = "USER_BLOCKED"


class WatermarkMismatch(PermissionDenied):
    default_reason = "WATERMARK_MISMATCH"


class CodeUserMismatch(PermissionDenied):
    default_reason = "CODE_USER_MISMATCH"


class FailedPrecondition(WxLoginError):
    code = grpc.StatusCode.FAILED_PRECONDITION
    default_reason = "FAILED_PRECONDITION"


class SessionKeyStale(FailedPrecondition):
    default_reason = "SESSION_KEY_STALE"


class RateLimited(WxLoginError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    default_reason = "RATE_LIMITED"


class Overloaded(RateLimited):
    default_reason = "OVERLOADED"


class Unavailable(WxLoginError):
    code = grpc.StatusCode.UNAVAILABLE
    default_reason = "SERVICE_UNAVAILABLE"


class WeChatUnavailable(Unavailable):
    default_reason = "WECHAT_UNAVAILABLE"


class WeChatError(Unavailable):
    default_reason = "WECHAT_ERROR"


class StoreUnavailable(Unavailable):
    default_reason = "STORE_UNAVAILABLE"


class ServiceUnavailable(Unavailable):
    default_reason = "SERVICE_UNAVAILABLE"


class CallerError(WxLoginError):
    """wxlogin refused *this backend* (its caller key, certificate or grant), not the user.

    Not an `Unauthenticated`: code that sends users to log in again on those
    must not do so for our own misconfiguration, which no login fixes. Over
    HTTP it is a 500: the user's request was fine, the server side is broken.
    """

    http_status = 500


class CallerUnauthenticated(CallerError):
    code = grpc.StatusCode.UNAUTHENTICATED
    default_reason = "CALLER_UNAUTHENTICATED"


class CallerForbidden(CallerError):
    code = grpc.StatusCode.PERMISSION_DENIED
    default_reason = "CALLER_FORBIDDEN"


class DeadlineExceeded(WxLoginError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED
    default_reason = "DEADLINE_EXCEEDED"


class InternalError(WxLoginError):
    code = grpc.StatusCode.INTERNAL
    default_reason = "INTERNAL"


# The one table from reason to exception class; the groups above are the
# fallback for a reason this version does not know.
BY_REASON: Mapping[str, type[WxLoginError]] = {
    cls.default_reason: cls
    for cls in (
        BadRequest,
        AppUnknown,
        DecryptFailed,
        WatermarkExpired,
        SignatureMismatch,
        CodeInvalid,
        CodeUsed,
        SessionInvalid,
        SessionExpired,
        UserBlocked,
        WatermarkMismatch,
        CodeUserMismatch,
        SessionKeyStale,
        RateLimited,
        Overloaded,
        WeChatUnavailable,
        WeChatError,
        StoreUnavailable,
        ServiceUnavailable,
        CallerUnauthenticated,
        CallerForbidden,
        DeadlineExceeded,
        InternalError,
    )
}
_BY_CODE: Mapping[grpc.StatusCode, type[WxLoginError]] = {
    cls.code: cls
    for cls in (
        InvalidRequest,
        Unauthenticated,
        PermissionDenied,
        FailedPrecondition,
        RateLimited,
        Unavailable,
        DeadlineExceeded,
    )
}
# No ErrorInfo means wxlogin never answered: grpc's own text names hosts and
# ports, so callers (and the edge's clients) get these words instead.
_NO_ANSWER: Mapping[grpc.StatusCode, tuple[type[WxLoginError], str]] = {
    grpc.StatusCode.UNAVAILABLE: (ServiceUnavailable, "wxlogin is unreachable; retry later"),
    grpc.StatusCode.DEADLINE_EXCEEDED: (DeadlineExceeded, "wxlogin did not answer in time"),
}


def error_for(code: grpc.StatusCode, reason: str | None, message: str = "") -> WxLoginError:
    """The exception for a status code and, when wxlogin sent one, its ErrorInfo reason."""
    if reason is None:
        fallback = (_BY_CODE.get(code, InternalError), f"wxlogin call failed ({code.name})")
        cls, text = _NO_ANSWER.get(code, fallback)
        return cls(text)
    known = BY_REASON.get(reason)
    # A known reason under an unexpected code is a protocol surprise: trust the code.
    if known is not None and known.code == code:
        return known(message, reason=reason)
    return _BY_CODE.get(code, InternalError)(message, reason=reason)


def from_rpc_error(error: grpc.aio.AioRpcError) -> WxLoginError:
    """Turn a failed call into the exception for its code and ErrorInfo reason."""
    code = error.code()
    reason, metadata = _error_info(error)
    made = error_for(code, reason, error.details() or "")
    made.metadata.update(metadata)
    return made


def _error_info(error: grpc.aio.AioRpcError) -> tuple[str | None, dict[str, str]]:
    for key, value in error.trailing_metadata() or ():
        if key != _STATUS_DETAILS_KEY or not isinstance(value, bytes):
            continue
        try:
            status = status_pb2.Status.FromString(value)
        except Exception:  # a garbled detail is as good as none
            return None, {}
        for detail in status.details:
            info = error_details_pb2.ErrorInfo()
            if detail.Unpack(info) and info.domain == DOMAIN:
                return str(info.reason), dict(info.metadata)
    return None, {}
