"""The edge's one mapping from gRPC status + ErrorInfo reason to HTTP, and its JSON error body.

    gRPC code            reason (examples)                           HTTP
    INVALID_ARGUMENT     BAD_REQUEST, APP_UNKNOWN, DECRYPT_FAILED,   400
                         WATERMARK_EXPIRED, SIGNATURE_MISMATCH
    UNAUTHENTICATED      CODE_INVALID, CODE_USED, SESSION_INVALID,   401
                         SESSION_EXPIRED
    PERMISSION_DENIED    USER_BLOCKED, WATERMARK_MISMATCH            403
    RESOURCE_EXHAUSTED   RATE_LIMITED                                429
    UNAVAILABLE          WECHAT_UNAVAILABLE, WECHAT_ERROR,           503
                         STORE_UNAVAILABLE, SERVICE_UNAVAILABLE
    DEADLINE_EXCEEDED    DEADLINE_EXCEEDED                           504
    anything else        INTERNAL, ...                               500

and the edge's own HTTP-level answers, which never come from wxlogin:
    PAYLOAD_TOO_LARGE 413, NOT_FOUND 404, METHOD_NOT_ALLOWED 405.

Body: {"error": {"code": "<gRPC code name>", "reason": "<reason>", "message": "<text>"}}.
"""

from __future__ import annotations

from collections.abc import Mapping

import grpc
from aiohttp import web

from clients._errors import InvalidRequest, WxLoginError


class PayloadTooLarge(InvalidRequest):
    """The body is over the edge's size limit (HTTP 413)."""

    default_reason = "PAYLOAD_TOO_LARGE"


class NotFound(WxLoginError):
    """No such route (HTTP 404)."""

    code = grpc.StatusCode.NOT_FOUND
    default_reason = "NOT_FOUND"


class MethodNotAllowed(WxLoginError):
    """The route exists, the method does not (HTTP 405)."""

    code = grpc.StatusCode.UNIMPLEMENTED
    default_reason = "METHOD_NOT_ALLOWED"


_BY_CODE: Mapping[grpc.StatusCode, int] = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
_BY_REASON: Mapping[str, int] = {
    "PAYLOAD_TOO_LARGE": 413,
    "NOT_FOUND": 404,
    "METHOD_NOT_ALLOWED": 405,
}
# RFC 6750: a 401 tells the client which scheme to use.
_CHALLENGE = 'Bearer realm="wxlogin"'


def http_status(code: grpc.StatusCode, reason: str) -> int:
    """The HTTP status for a gRPC code and ErrorInfo reason."""
    return _BY_REASON.get(reason) or _BY_CODE.get(code, 500)


def error_body(code: grpc.StatusCode, reason: str, message: str) -> dict[str, dict[str, str]]:
    """The JSON error body of the contract (shared DESIGN.md, README "Errors")."""
    return {"error": {"code": code.name, "reason": reason, "message": message}}


def error_response(
    error: WxLoginError, *, headers: Mapping[str, str] | None = None
) -> web.Response:
    """A JSON error answer for a wxlogin failure (from the service or the edge itself)."""
    status = http_status(error.code, error.reason)
    all_headers = dict(headers or {})
    if status == 401:
        all_headers.setdefault("WWW-Authenticate", _CHALLENGE)
    return web.json_response(
        error_body(error.code, error.reason, error.message), status=status, headers=all_headers
    )
