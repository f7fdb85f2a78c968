"""The edge's own HTTP-level failures; everything else maps through `clients.http_errors`.

PAYLOAD_TOO_LARGE 413, NOT_FOUND 404, METHOD_NOT_ALLOWED 405: answers of the
edge itself, never of wxlogin, so they pin their HTTP status.
"""

from __future__ import annotations

import grpc

from clients._errors import InvalidRequest, WxLoginError


class PayloadTooLarge(InvalidRequest):
    """The body is over the edge's size limit (HTTP 413)."""

    default_reason = "PAYLOAD_TOO_LARGE"
    http_status = 413


class NotFound(WxLoginError):
    """No such route (HTTP 404)."""

    code = grpc.StatusCode.NOT_FOUND
    default_reason = "NOT_FOUND"
    http_status = 404


class MethodNotAllowed(WxLoginError):
    """The route exists, the method does not (HTTP 405)."""

    code = grpc.StatusCode.UNIMPLEMENTED
    default_reason = "METHOD_NOT_ALLOWED"
    http_status = 405
