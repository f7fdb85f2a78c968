"""The error tree and the one table that turns it into gRPC status + ErrorInfo.

    WxLoginError                    (reason, gRPC code: see REASON_CODES)
    ├── BadRequest                  BAD_REQUEST          INVALID_ARGUMENT
    ├── AppUnknown                  APP_UNKNOWN          INVALID_ARGUMENT
    ├── CodeInvalid                 CODE_INVALID         UNAUTHENTICATED
    ├── CodeUsed                    CODE_USED            UNAUTHENTICATED
    ├── RateLimited                 RATE_LIMITED         RESOURCE_EXHAUSTED
    ├── UserBlocked                 USER_BLOCKED         PERMISSION_DENIED
    ├── WeChatUnavailable           WECHAT_UNAVAILABLE   UNAVAILABLE
    ├── WeChatError                 WECHAT_ERROR         UNAVAILABLE  (errcode in metadata)
    ├── SessionInvalid              SESSION_INVALID      UNAUTHENTICATED
    ├── SessionExpired              SESSION_EXPIRED      UNAUTHENTICATED
    ├── DecryptFailed               DECRYPT_FAILED       INVALID_ARGUMENT
    ├── WatermarkMismatch           WATERMARK_MISMATCH   PERMISSION_DENIED
    ├── WatermarkExpired            WATERMARK_EXPIRED    INVALID_ARGUMENT
    ├── SignatureMismatch           SIGNATURE_MISMATCH   INVALID_ARGUMENT
    ├── StoreUnavailable            STORE_UNAVAILABLE    UNAVAILABLE
    ├── Overloaded                  OVERLOADED           RESOURCE_EXHAUSTED
    ├── CallerUnauthenticated       CALLER_UNAUTHENTICATED  UNAUTHENTICATED
    ├── CallerForbidden             CALLER_FORBIDDEN     PERMISSION_DENIED
    ├── CodeUserMismatch            CODE_USER_MISMATCH   PERMISSION_DENIED
    ├── SessionKeyStale             SESSION_KEY_STALE    FAILED_PRECONDITION
    └── InternalError               INTERNAL             INTERNAL

CALLER_* are about the backend calling us (WXLOGIN_CALLERS_FILE), never the user.

Messages are written for the caller: they never carry secrets, tokens, stack
traces or MongoDB's own error text. Anything not in the tree becomes INTERNAL.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

DOMAIN = "wxlogin"


class WxLoginError(Exception):
    """Base of every failure a caller can see; `reason` selects the gRPC code."""

    reason = "INTERNAL"
    default_message = "internal error"

    def __init__(self, message: str | None = None, **metadata: str) -> None:
        self.message = message or self.default_message
        self.metadata: dict[str, str] = metadata
        super().__init__(self.message)


class BadRequest(WxLoginError):
    reason = "BAD_REQUEST"
    default_message = "malformed request"


class AppUnknown(WxLoginError):
    reason = "APP_UNKNOWN"
    default_message = "app_id is not configured"


class CodeInvalid(WxLoginError):
    reason = "CODE_INVALID"
    default_message = "the login code is invalid or expired; call wx.login() again"


class CodeUsed(WxLoginError):
    reason = "CODE_USED"
    default_message = "the login code was already used; call wx.login() again"


class RateLimited(WxLoginError):
    reason = "RATE_LIMITED"
    default_message = "WeChat rate limit reached; retry later"


class UserBlocked(WxLoginError):
    reason = "USER_BLOCKED"
    default_message = "WeChat blocked this user as high-risk"


class WeChatUnavailable(WxLoginError):
    reason = "WECHAT_UNAVAILABLE"
    default_message = "WeChat is unavailable; retry later"


class WeChatError(WxLoginError):
    reason = "WECHAT_ERROR"
    default_message = "WeChat returned an error"


class SessionInvalid(WxLoginError):
    reason = "SESSION_INVALID"
    default_message = "token is unknown, revoked or malformed; log in again"


class SessionExpired(WxLoginError):
    reason = "SESSION_EXPIRED"
    default_message = "session expired; log in again"


class DecryptFailed(WxLoginError):
    reason = "DECRYPT_FAILED"
    default_message = (
        "could not decrypt encrypted_data with the user's session_key "
        "(if wx.login() ran again since, send its code with the data)"
    )


class WatermarkMismatch(WxLoginError):
    reason = "WATERMARK_MISMATCH"
    default_message = "the data is watermarked for another app"


class WatermarkExpired(WxLoginError):
    reason = "WATERMARK_EXPIRED"
    default_message = "the data's watermark is too old (WXLOGIN_WATERMARK_MAX_AGE)"


class SignatureMismatch(WxLoginError):
    reason = "SIGNATURE_MISMATCH"
    default_message = "signature does not match raw_data"


class StoreUnavailable(WxLoginError):
    reason = "STORE_UNAVAILABLE"
    default_message = "session store is unavailable; retry later"


class Overloaded(WxLoginError):
    reason = "OVERLOADED"
    default_message = "wxlogin is shedding load; retry with backoff"


class CallerUnauthenticated(WxLoginError):
    reason = "CALLER_UNAUTHENTICATED"
    default_message = (
        "unknown or missing caller credentials: send metadata x-wxlogin-caller-key "
        "or a client certificate named in wxlogin's callers file"
    )


class CallerForbidden(WxLoginError):
    reason = "CALLER_FORBIDDEN"
    default_message = "this caller may not make this call (see wxlogin's callers file)"


class CodeUserMismatch(WxLoginError):
    reason = "CODE_USER_MISMATCH"
    default_message = "the code belongs to another user than the session's"


class SessionKeyStale(WxLoginError):
    reason = "SESSION_KEY_STALE"
    default_message = (
        "WeChat has a newer session_key for this user: call wx.login() and send the code "
        "with the data"
    )


class InternalError(WxLoginError):
    reason = "INTERNAL"
    default_message = "internal error"


# The one table from reason to wire status. Clients branch on the reason.
REASON_CODES: Mapping[str, grpc.StatusCode] = {
    "BAD_REQUEST": grpc.StatusCode.INVALID_ARGUMENT,
    "APP_UNKNOWN": grpc.StatusCode.INVALID_ARGUMENT,
    "CODE_INVALID": grpc.StatusCode.UNAUTHENTICATED,
    "CODE_USED": grpc.StatusCode.UNAUTHENTICATED,
    "RATE_LIMITED": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "USER_BLOCKED": grpc.StatusCode.PERMISSION_DENIED,
    "WECHAT_UNAVAILABLE": grpc.StatusCode.UNAVAILABLE,
    "WECHAT_ERROR": grpc.StatusCode.UNAVAILABLE,
    "SESSION_INVALID": grpc.StatusCode.UNAUTHENTICATED,
    "SESSION_EXPIRED": grpc.StatusCode.UNAUTHENTICATED,
    "DECRYPT_FAILED": grpc.StatusCode.INVALID_ARGUMENT,
    "WATERMARK_MISMATCH": grpc.StatusCode.PERMISSION_DENIED,
    "WATERMARK_EXPIRED": grpc.StatusCode.INVALID_ARGUMENT,
    "SIGNATURE_MISMATCH": grpc.StatusCode.INVALID_ARGUMENT,
    "STORE_UNAVAILABLE": grpc.StatusCode.UNAVAILABLE,
    "OVERLOADED": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "CALLER_UNAUTHENTICATED": grpc.StatusCode.UNAUTHENTICATED,
    "CALLER_FORBIDDEN": grpc.StatusCode.PERMISSION_DENIED,
    "CODE_USER_MISMATCH": grpc.StatusCode.PERMISSION_DENIED,
    "SESSION_KEY_STALE": grpc.StatusCode.FAILED_PRECONDITION,
    "INTERNAL": grpc.StatusCode.INTERNAL,
}


def from_reason(reason: str, metadata: Mapping[str, str] | None = None) -> WxLoginError:
    """A new error of the class for `reason` (one kept earlier); INTERNAL for an unknown one."""
    for cls in WxLoginError.__subclasses__():
        if cls.reason == reason:
            return cls(**dict(metadata or {}))
    return InternalError()


def to_grpc_status(error: WxLoginError) -> grpc.Status:
    """Turn an error into a gRPC status with a google.rpc.ErrorInfo detail."""
    return _status(error.reason, error.message, tuple(sorted(error.metadata.items())))


# Most failures repeat exactly (a flood of unknown tokens is one status over and
# over): building the ErrorInfo and its trailer once per distinct error saved
# ~5 % of an unknown-token CheckSession. Bounded: messages and metadata vary little.
@functools.lru_cache(maxsize=256)
def _status(reason: str, message: str, metadata: tuple[tuple[str, str], ...]) -> grpc.Status:
    code = REASON_CODES.get(reason, grpc.StatusCode.INTERNAL)
    info = error_details_pb2.ErrorInfo(reason=reason, domain=DOMAIN, metadata=dict(metadata))
    detail = any_pb2.Any()
    detail.Pack(info)
    status = status_pb2.Status(code=getattr(code_pb2, code.name), message=message, details=[detail])
    return rpc_status.to_status(status)  # type: ignore[no-any-return]
