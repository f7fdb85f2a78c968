"""How a wxlogin failure looks over HTTP: the one gRPC -> HTTP status mapping and the JSON body.

    gRPC code            reason (examples)                           HTTP
    INVALID_ARGUMENT     BAD_REQUEST, APP_UNKNOWN, DECRYPT_FAILED,   400
                         WATERMARK_EXPIRED, SIGNATURE_MISMATCH
    UNAUTHENTICATED      CODE_INVALID, CODE_USED, SESSION_INVALID,   401
                         SESSION_EXPIRED
    PERMISSION_DENIED    USER_BLOCKED, WATERMARK_MISMATCH,           403
                         CODE_USER_MISMATCH
    FAILED_PRECONDITION  SESSION_KEY_STALE                           400
    RESOURCE_EXHAUSTED   RATE_LIMITED                                429
    UNAVAILABLE          WECHAT_UNAVAILABLE, WECHAT_ERROR,           503
                         STORE_UNAVAILABLE, SERVICE_UNAVAILABLE
    DEADLINE_EXCEEDED    DEADLINE_EXCEEDED                           504
    anything else        INTERNAL, ...                               500
    (pinned)             CALLER_UNAUTHENTICATED, CALLER_FORBIDDEN    500

An error class may pin its own status (`WxLoginError.http_status`): the edge's
HTTP-level answers (413, 404, 405) do, since they never come from wxlogin, and
so do the CALLER_* reasons: they say wxlogin refused the *backend* (its caller
key or grant), so a 401 or 403 would blame the user and send a mini-program to
log in again, which can never help. To the user it is a server-side fault: 500.

Body: {"error": {"code": "<gRPC code name>", "reason": "<reason>", "message": "<text>"}}.
Used by `clients.aiohttp_auth` and by the edge, so both answer the same way.
"""

from __future__ import annotations

from collections.abc import Mapping

import grpc
from aiohttp import web

from clients._errors import WxLoginError

_BY_CODE: Mapping[grpc.StatusCode, int] = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    # google.rpc's own mapping; the body's reason says which step comes first.
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
# RFC 6750: a 401 tells the client which scheme to use.
_CHALLENGE = 'Bearer realm="wxlogin"'


def http_status(error: WxLoginError) -> int:
    """The HTTP status for a wxlogin failure."""
    return error.http_status or _BY_CODE.get(error.code, 500)


def error_body(code: grpc.StatusCode, reason: str, message: str) -> dict[str, dict[str, str]]:
    """The JSON error body of the contract (shared DESIGN.md, README "Errors")."""
    return {"error": {"code": code.name, "reason": reason, "message": message}}


def error_response(
    error: WxLoginError, *, headers: Mapping[str, str] | None = None
) -> web.Response:
    """A JSON error answer for a wxlogin failure."""
    status = http_status(error)
    all_headers = dict(headers or {})
    if status == 401:
        all_headers.setdefault("WWW-Authenticate", _CHALLENGE)
    return web.json_response(
        error_body(error.code, error.reason, error.message), status=status, headers=all_headers
    )
